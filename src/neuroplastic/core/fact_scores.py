"""Scoring facts with a model (:mod:`neuroplastic.data.facts` generates and splits them): each
fact's multiple choice by log-likelihood, its greedy continuation, and which facts a model
knows. Kept out of :mod:`neuroplastic.data`, which never runs a model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from neuroplastic.core.models import model_device
from neuroplastic.data.concept import _needs_bos, _needs_prefix_space, _pad_id
from neuroplastic.data.facts import (
    EVAL_TEMPLATES,
    RELATIONS,
    Fact,
    MultipleChoice,
    multiple_choices,
    prompt_for,
)
from neuroplastic.errors import NeuroplasticError


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


def _match_decided(text: str, answer: str) -> bool:
    """Whether more text could still change :func:`greedy_exact_match`'s verdict: no once the
    text has left the answer, or has written it and the character after it."""
    stripped = text.lstrip()
    if stripped.startswith(answer):
        return len(stripped) > len(answer)
    return not answer.startswith(stripped)


def _greedy_batch(
    model: Any, prompts: Sequence[str], max_new_tokens: int, answers: Sequence[str] | None
) -> list[str]:
    """Greedy continuations of a batch, one forward of the rows still writing per new token
    (no KV cache: prompts are a few tokens, and a right-padded forward is exactly the
    unbatched one). A row stops at the end-of-sequence token, which is not part of its text,
    and, given its answer, as soon as its match is decided."""
    tokenizer = model.tokenizer
    encode = _encoder(tokenizer)
    rows = [encode(p).ids for p in prompts]
    new: list[list[int]] = [[] for _ in rows]
    writing = list(range(len(rows)))
    for _ in range(max_new_tokens):
        if not writing:
            break
        tokens, mask = _right_padded([rows[i] for i in writing], _pad_id(tokenizer))
        last = torch.tensor([len(rows[i]) - 1 for i in writing])
        chosen = _logits(model, tokens, mask)[torch.arange(len(writing)), last].argmax(-1)
        still = []
        for i, token in zip(writing, chosen.tolist(), strict=True):
            if token == tokenizer.eos_token_id:
                continue
            rows[i] = rows[i] + [token]
            new[i].append(token)
            if answers is None or not _match_decided(tokenizer.decode(new[i]), answers[i]):
                still.append(i)
        writing = still
    return [tokenizer.decode(ids) for ids in new]


def greedy_answers(
    model: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 8,
    batch_size: int = 32,
    answers: Sequence[str] | None = None,
) -> list[str]:
    """Each prompt's greedy continuation, as text (it starts with the space before the first
    word when the model writes one), at most ``max_new_tokens`` tokens, cut at end-of-sequence.
    Prompts are tokenized as :func:`choice_log_likelihoods` tokenizes them.

    With ``answers`` (one per prompt), a row stops as soon as :func:`greedy_exact_match` is
    decided for it: most continuations leave the answer at their first token, so scoring many
    facts costs a few forwards, not ``max_new_tokens``. The text is then the continuation's
    beginning, and its verdict the full continuation's."""
    if answers is not None and len(answers) != len(prompts):
        raise NeuroplasticError(f"{len(answers)} answers for {len(prompts)} prompts")
    out: list[str] = []
    with _evaluating(model):
        for start in range(0, len(prompts), batch_size):
            end = start + batch_size
            chunk = None if answers is None else answers[start:end]
            out += _greedy_batch(model, prompts[start:end], max_new_tokens, chunk)
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


def ask(
    model: Any,
    questions: Sequence[MultipleChoice],
    templates: Mapping[str, str] | None = None,
    batch_size: int = 32,
    greedy: bool = True,
) -> list[FactResult]:
    """Ask ``model`` fixed questions: multiple choice among each question's choices, and
    (``greedy``) its greedy continuation, with one template per relation (by default the first
    evaluation template). Greedy stops where its match is decided, and at most two tokens past
    the longest answer, so a match is followed by a boundary the model actually wrote, not by
    the end of the budget; ``greedy`` holds the text up to there (empty when not asked).

    The questions are the instrument: draw them once (:func:`multiple_choices` over the whole
    fact pool) and ask every model state the same ones, so a change in accuracy is the model's."""
    if not questions:
        raise NeuroplasticError("no questions to ask")
    templates = {r: EVAL_TEMPLATES[r][0] for r in RELATIONS} | dict(templates or {})
    facts = [q.fact for q in questions]
    prompts = [prompt_for(f, templates[f.relation]) for f in facts]
    scores = choice_log_likelihoods(model, prompts, [q.choices for q in questions], batch_size)
    answer_index = torch.tensor([q.answer_index for q in questions])
    correct = multiple_choice_correct(scores, answer_index).tolist()
    if greedy:
        budget = max(_answer_tokens(model.tokenizer, f.answer) for f in facts) + 2
        texts = greedy_answers(model, prompts, budget, batch_size, [f.answer for f in facts])
    else:
        texts = [""] * len(facts)
    return [
        FactResult(
            fact=q.fact,
            prompt=prompt,
            choices=q.choices,
            answer_index=q.answer_index,
            log_likelihoods=tuple(row),
            multiple_choice=bool(right),
            greedy=text,
            greedy_match=greedy and greedy_exact_match(text, q.fact.answer),
        )
        for q, prompt, row, right, text in zip(
            questions, prompts, scores.tolist(), correct, texts, strict=True
        )
    ]


def accuracies(results: Sequence[FactResult], greedy: bool = True) -> dict[str, float | int]:
    """The share answered right by multiple choice (and greedily, when asked), and how many."""
    n = len(results)
    out: dict[str, float | int] = {
        "n": n,
        "multiple_choice": sum(r.multiple_choice for r in results) / n,
    }
    if greedy:
        out["greedy"] = sum(r.greedy_match for r in results) / n
    return out


def evaluate_facts(
    model: Any,
    facts: Sequence[Fact],
    templates: Mapping[str, str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> list[FactResult]:
    """Ask ``model`` every fact (see :func:`ask`), with distractors drawn from ``facts`` with
    ``seed``."""
    return ask(model, multiple_choices(facts, seed), templates, batch_size)


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
