"""Pick a corpus by name: ``embedded``, a CoNLL file or directory, or a Hugging Face dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.types import ENTITY_TYPES, NerCorpus
from neuroplastic.errors import NeuroplasticError

EMBEDDED = "embedded"
_DATASETS_FILES = ("parquet", "jsonl", "json", "arrow")
SPLITS = ("train", "validation", "probe")


def load_corpus(
    name: str = EMBEDDED,
    n_train: int = 4000,
    n_validation: int = 800,
    n_probe: int = 0,
    seed: int = 0,
) -> NerCorpus:
    """``embedded`` (the synthetic offline corpus), a CoNLL path, or a hub dataset name.

    The sizes and ``seed`` apply to the embedded corpus only; it alone has a probe split (names
    and sentences of its own). A file or hub dataset comes whole, with an empty probe split.
    """
    if name == EMBEDDED:
        from neuroplastic.data.synthetic import generate_corpus

        return generate_corpus(
            n_train=n_train, n_validation=n_validation, n_probe=n_probe, seed=seed
        )
    path = Path(name).expanduser()
    if path.is_dir() and any(next(path.glob(f"*.{ext}"), None) for ext in _DATASETS_FILES):
        # A local copy of a hub dataset (parquet / JSON lines files): the hub loading path.
        from neuroplastic.data.hf import load_hf_dataset

        return load_hf_dataset(str(path))
    if path.exists():
        from neuroplastic.data.conll import read_conll

        return read_conll(path)
    if name.startswith((".", "/", "~")) or name.endswith((".txt", ".conll")):
        raise NeuroplasticError(f"dataset path not found: {path}")
    from neuroplastic.data.hf import load_hf_dataset

    return load_hf_dataset(name)


def concept_labels(corpus: NerCorpus) -> tuple[str, ...]:
    """``O`` then the entity types, the usual four first in their customary order."""
    present = corpus.entity_types
    ordered = [t for t in ENTITY_TYPES if t in present]
    return ("O", *ordered, *sorted(set(present) - set(ordered)))


def encode_split(
    corpus: NerCorpus,
    tokenizer,
    split: Literal["train", "validation", "probe"],
    max_length: int = 128,
    limit: int | None = None,
    start: int = 0,
) -> ConceptDataset:
    """Tokenize ``limit`` sentences of a split from ``start`` on (all of them by default)."""
    if split not in SPLITS:
        raise NeuroplasticError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if limit is not None and limit <= 0:
        raise NeuroplasticError(f"the sentence limit must be positive; got {limit}")
    if split == "probe" and not corpus.probe:
        how = (
            "load it with load_corpus('embedded', n_probe=N) for N probe sentences of their own"
            if corpus.name == EMBEDDED
            else "only the embedded corpus has one; take probe sentences from its train split"
        )
        raise NeuroplasticError(f"the {corpus.name} corpus has no probe split: {how}")
    sentences = getattr(corpus, split)[start:]
    if limit is not None:
        sentences = sentences[:limit]
    return ConceptDataset(
        sentences, tokenizer, concept_labels(corpus), corpus.tag_names, max_length=max_length
    )
