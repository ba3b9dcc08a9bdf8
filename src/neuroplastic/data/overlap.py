"""How many entity mentions of one split were already seen, verbatim, in another.

A model that scores well on validation names it met in training may have memorised them rather
than learned the concept. :func:`mention_overlap` says how large that share is for any corpus
(CoNLL-2003, a hub dataset, the embedded one), so a run can report it next to its F1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from neuroplastic.data.types import NerSentence

__all__ = ["entity_mentions", "mention_overlap"]

Mention = tuple[str, tuple[str, ...]]


def entity_mentions(sentences: Iterable[NerSentence]) -> list[Mention]:
    """``(type, words)`` of every entity mention, in order, read from IOB2 tags.

    ``B-X`` starts a mention of type X and ``I-X`` continues it. An ``I-`` tag that does not
    continue a mention of its type (after ``O`` or another type; IOB1 data) starts a new one, as
    :func:`neuroplastic.data.types.iob1_to_iob2` would read it.
    """
    mentions: list[Mention] = []
    for sentence in sentences:
        kind: str | None = None
        words: list[str] = []
        for word, tag in zip(sentence.words, sentence.tags, strict=True):
            prefix, _, tag_kind = tag.partition("-")
            if prefix == "I" and tag_kind == kind:
                words.append(word)
                continue
            if kind is not None:
                mentions.append((kind, tuple(words)))
            kind, words = (tag_kind, [word]) if prefix in ("B", "I") else (None, [])
        if kind is not None:
            mentions.append((kind, tuple(words)))
    return mentions


def mention_overlap(
    reference: Sequence[NerSentence], other: Sequence[NerSentence]
) -> dict[str, dict[str, float | int]]:
    """Per entity type of ``other``: how many of its mentions also occur in ``reference``.

    For each type with a mention in ``other``: ``mentions`` (the number of its mentions there,
    repeats counted), ``seen`` (how many of them appear among ``reference``'s mentions with the
    same words and the same type) and ``share`` (``seen / mentions``). Typical use:
    ``mention_overlap(train, validation)``, the share of validation mentions seen in training.
    """
    known = set(entity_mentions(reference))
    counts: dict[str, dict[str, float | int]] = {}
    for mention in entity_mentions(other):
        entry = counts.setdefault(mention[0], {"mentions": 0, "seen": 0, "share": 0.0})
        entry["mentions"] += 1
        entry["seen"] += mention in known
    for entry in counts.values():
        entry["share"] = entry["seen"] / entry["mentions"]
    return {kind: counts[kind] for kind in sorted(counts)}
