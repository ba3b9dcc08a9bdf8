"""Word-level NER sentences, the common currency of every corpus reader."""

from __future__ import annotations

from dataclasses import dataclass, field

ENTITY_TYPES: tuple[str, ...] = ("LOC", "PER", "ORG", "MISC")


@dataclass(frozen=True)
class NerSentence:
    """One sentence: words and their IOB2 tags (``O``, ``B-LOC``, ``I-LOC``, ...)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.words) != len(self.tags):
            raise ValueError(f"{len(self.words)} words but {len(self.tags)} tags")

    @property
    def entity_labels(self) -> tuple[str, ...]:
        """The entity type of each word, ``O`` outside entities (``B-LOC`` -> ``LOC``)."""
        return tuple(tag if tag == "O" else tag.split("-", 1)[1] for tag in self.tags)


@dataclass
class NerCorpus:
    """Train and validation splits of a word-level NER corpus, and optionally a probe split.

    ``probe`` holds sentences to rank neurons on, kept apart from both the sentences a model is
    trained on and those it is evaluated on. Only the embedded corpus fills it; for a corpus
    without one it is empty, and probe sentences are taken from the train split instead.
    """

    name: str
    train: list[NerSentence]
    validation: list[NerSentence]
    tag_names: tuple[str, ...] = field(default=())
    probe: list[NerSentence] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.tag_names:
            tags = {t for s in (*self.train, *self.validation, *self.probe) for t in s.tags}
            self.tag_names = tuple(sorted(tags, key=_tag_order))

    @property
    def entity_types(self) -> tuple[str, ...]:
        return tuple(sorted({t.split("-", 1)[1] for t in self.tag_names if t != "O"}))


def _tag_order(tag: str) -> tuple[int, str, str]:
    if tag == "O":
        return (0, "", "")
    prefix, kind = tag.split("-", 1)
    return (1, kind, prefix)


def is_valid_tag(tag: str) -> bool:
    """``O``, or ``B-``/``I-`` followed by an entity type (``B-LOC``)."""
    if tag == "O":
        return True
    prefix, _, kind = tag.partition("-")
    return prefix in ("B", "I") and kind.isalpha()


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """Convert IOB1 (``I-`` may start an entity) to IOB2 (every entity starts with ``B-``).

    IOB2 input passes through unchanged, so this is safe to apply to either scheme.
    """
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-"):
            kind = tag[2:]
            if previous == "O" or previous[2:] != kind:
                tag = "B-" + kind
        out.append(tag)
        previous = tag
    return out
