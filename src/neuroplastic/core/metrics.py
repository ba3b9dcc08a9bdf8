"""Entity-level NER metrics with seqeval (the standard behind CoNLL scores and HF scripts)."""

from __future__ import annotations

from collections.abc import Sequence

from seqeval.metrics import classification_report

ENTITY_KEYS = ("precision", "recall", "f1")


def entity_scores(
    true_tags: Sequence[Sequence[str]],
    predicted_tags: Sequence[Sequence[str]],
    entity_types: Sequence[str],
) -> dict[str, dict[str, float]]:
    """``{"f1": {"overall": x, "LOC": x, ...}, "precision": {...}, "recall": {...}}``.

    seqeval's default (conlleval) matching, as the Hugging Face NER scripts and the paper use;
    ``overall`` is the micro average. A type with no entities in truth or predictions scores 0,
    so every requested type is always present.
    """
    report = classification_report(
        [list(t) for t in true_tags],
        [list(p) for p in predicted_tags],
        output_dict=True,
        zero_division=0,
    )
    scores: dict[str, dict[str, float]] = {}
    for key in ENTITY_KEYS:
        field = "f1-score" if key == "f1" else key
        scores[key] = {"overall": float(report.get("micro avg", {}).get(field, 0.0))}
        for kind in entity_types:
            scores[key][kind] = float(report.get(kind, {}).get(field, 0.0))
    return scores
