"""Hugging Face ``datasets`` objects with ``tokens`` and ``ner_tags`` (the conll2003 schema)."""

from __future__ import annotations

from typing import Any

from neuroplastic.data.types import NerCorpus, NerSentence, iob1_to_iob2, is_valid_tag
from neuroplastic.errors import NeuroplasticError

_VALIDATION_SPLITS = ("validation", "valid", "dev", "test")


def from_hf_dataset(dataset: Any, name: str = "hf") -> NerCorpus:
    """A corpus from a ``DatasetDict`` with a train split and a validation (or test) split.

    ``ner_tags`` may be ClassLabel ids (names read from the features) or tag strings.
    """
    splits = dict(dataset.items()) if hasattr(dataset, "items") else {}
    if "train" not in splits:
        raise NeuroplasticError(
            f"{name}: a DatasetDict with a 'train' split is needed; found splits "
            f"{sorted(splits) or 'none'}"
        )
    validation_name = next((s for s in _VALIDATION_SPLITS if s in splits), None)
    if validation_name is None:
        raise NeuroplasticError(
            f"{name}: no validation split; expected one of {', '.join(_VALIDATION_SPLITS)}"
        )
    return NerCorpus(
        name,
        _sentences(splits["train"], f"{name}/train"),
        _sentences(splits[validation_name], f"{name}/{validation_name}"),
    )


def load_hf_dataset(name: str) -> NerCorpus:
    """Load a dataset by hub name (needs network unless it is in the local ``datasets`` cache)."""
    import datasets

    from neuroplastic.progress import library_bars

    try:
        with library_bars():  # download and "Generating split" bars, not in a log file
            dataset = _load_with_parquet_fallback(datasets, name)
    except Exception as error:  # the hub raises many unrelated types; all mean "cannot load"
        raise NeuroplasticError(
            f"could not load dataset {name!r} with datasets.load_dataset: {error}. Pass "
            "'embedded', a CoNLL file or directory, or a hub name reachable from this machine"
        ) from error
    return from_hf_dataset(dataset, name=name)


def _load_with_parquet_fallback(datasets, name: str):
    """datasets >= 4 no longer runs loading scripts, and conll2003 on the hub is one; the hub's
    automatic parquet export of the same data loads without it."""
    try:
        return datasets.load_dataset(name)
    except RuntimeError as error:
        if "scripts are no longer supported" not in str(error):
            raise
        return datasets.load_dataset(name, revision="refs/convert/parquet")


def _sentences(split: Any, where: str) -> list[NerSentence]:
    columns = set(split.column_names)
    if not {"tokens", "ner_tags"} <= columns:
        raise NeuroplasticError(
            f"{where}: needs columns 'tokens' and 'ner_tags'; found {sorted(columns)}"
        )
    names = _label_names(split)
    sentences = []
    for index, row in enumerate(split):
        tags = [names[t] if names is not None else str(t) for t in row["ner_tags"]]
        if len(tags) != len(row["tokens"]):
            raise NeuroplasticError(f"{where}, row {index}: tokens and ner_tags differ in length")
        bad = next((t for t in tags if not is_valid_tag(t)), None)
        if bad is not None:
            raise NeuroplasticError(
                f"{where}, row {index}: {bad!r} is not an NER tag; ner_tags must be O, B-TYPE or "
                "I-TYPE strings, or ids of a ClassLabel feature with such names"
            )
        if row["tokens"]:
            sentences.append(NerSentence(tuple(row["tokens"]), tuple(iob1_to_iob2(tags))))
    if not sentences:
        raise NeuroplasticError(f"{where}: no sentences")
    return sentences


def _label_names(split: Any) -> list[str] | None:
    feature = split.features["ner_tags"]
    inner = getattr(feature, "feature", None)
    return list(inner.names) if inner is not None and hasattr(inner, "names") else None
