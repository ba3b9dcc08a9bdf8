"""Read CoNLL NER files: the 4-column CoNLL-2003 layout and the 2-column ``word TAG`` layout.

Tags may be IOB1 (CoNLL-2003's original scheme) or IOB2; both come out as IOB2.
"""

from __future__ import annotations

import io
from pathlib import Path

from neuroplastic.data.types import NerCorpus, NerSentence, iob1_to_iob2, is_valid_tag
from neuroplastic.errors import NeuroplasticError

_SPLIT_NAMES = {
    "train": ("train", "train.txt", "train.conll", "eng.train"),
    "validation": (
        "validation",
        "validation.txt",
        "valid.txt",
        "dev.txt",
        "dev",
        "valid",
        "validation.conll",
        "dev.conll",
        "eng.testa",
    ),
}


def read_conll_file(path: str | Path) -> list[NerSentence]:
    """Sentences of one CoNLL file; the tag is the last column of each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise NeuroplasticError(f"CoNLL file not found: {path}")
    sentences: list[NerSentence] = []
    words: list[str] = []
    tags: list[str] = []
    n_columns: int | None = None

    def flush() -> None:
        if words:
            sentences.append(NerSentence(tuple(words), tuple(iob1_to_iob2(tags))))
            words.clear()
            tags.clear()

    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is not part of the text
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line_number = data.count(b"\n", 0, error.start) + 1
        raise NeuroplasticError(
            f"{path}, line {line_number}: not UTF-8 text ({error.reason}: byte "
            f"0x{data[error.start]:02x} at column {error.start - line_start + 1}); convert the "
            "file to UTF-8 (e.g. with iconv -f latin1 -t utf-8)"
        ) from error
    for line_number, line in enumerate(io.StringIO(text, newline=None), start=1):
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        where = f"{path}, line {line_number}"
        if len(fields) not in (2, 4):
            raise NeuroplasticError(
                f"{where}: expected 2 columns (word TAG) or 4 (word POS chunk TAG), "
                f"found {len(fields)}: {line.rstrip()!r}"
            )
        if n_columns is None:
            n_columns = len(fields)
        elif len(fields) != n_columns:
            raise NeuroplasticError(
                f"{where}: {len(fields)} columns, but the file started with {n_columns}"
            )
        tag = fields[-1]
        if not is_valid_tag(tag):
            raise NeuroplasticError(
                f"{where}: {tag!r} is not an NER tag; expected O, B-TYPE or I-TYPE "
                "(e.g. B-LOC) in the last column"
            )
        words.append(fields[0])
        tags.append(tag)
    flush()
    if not sentences:
        raise NeuroplasticError(f"{path}: no sentences found; is this a CoNLL NER file?")
    return sentences


def read_conll(path: str | Path, validation_fraction: float = 0.15) -> NerCorpus:
    """A corpus from a directory with train/validation files, or from one file split in two.

    A single file is split deterministically: the last ``validation_fraction`` of its sentences
    become the validation split.
    """
    path = Path(path)
    if path.is_dir():
        found = {split: _find_split(path, names) for split, names in _SPLIT_NAMES.items()}
        if found["train"] is None:
            listing = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise NeuroplasticError(
                f"{path}: no training file; expected one of {', '.join(_SPLIT_NAMES['train'])} "
                f"(the directory holds: {listing})"
            )
        train = read_conll_file(found["train"])
        if found["validation"] is None:
            return _split_single(path.name, train, validation_fraction)
        return NerCorpus(path.name, train, read_conll_file(found["validation"]))
    if path.is_file():
        return _split_single(path.stem, read_conll_file(path), validation_fraction)
    raise NeuroplasticError(f"dataset path not found: {path}")


def _split_single(name: str, sentences: list[NerSentence], fraction: float) -> NerCorpus:
    if len(sentences) < 2:
        raise NeuroplasticError(
            f"{name}: only {len(sentences)} sentence; need at least 2 to split into "
            "train and validation"
        )
    n_validation = max(1, round(len(sentences) * fraction))
    return NerCorpus(name, sentences[:-n_validation], sentences[-n_validation:])


def _find_split(directory: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None
