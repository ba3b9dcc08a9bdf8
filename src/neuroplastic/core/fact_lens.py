"""Where a fact's answer can still be read: the logit lens over every layer's residual stream.

A removal can take an answer away, or only disconnect it: the answer is still computed in the
middle of the model and something downstream stops it from reaching the output. The logit lens
(nostalgebraist 2020) reads each layer's residual at the position that predicts the answer
through the model's own final norm and unembedding, with nothing fitted, so nothing is learned
from the facts it is asked about. :func:`lens_accuracies` asks each question's multiple choice
at every layer this way, each choice scored by the log-probability of its first token.

At the last layer the lens is the model's own next-token prediction. Early layers are not in
the unembedding's basis, so their accuracy sits near chance for any model; what tells removed
from disconnected is a layer that reads the answer at base and still reads it after the removal,
while the output does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from neuroplastic.core.fact_scores import _encoder, _evaluating, _right_padded
from neuroplastic.core.models import model_device
from neuroplastic.data.concept import _pad_id
from neuroplastic.data.facts import EVAL_TEMPLATES, RELATIONS, MultipleChoice, prompt_for
from neuroplastic.errors import NeuroplasticError

#: What a lens does to the stacked residuals before the final norm (the fitted lens's maps,
#: :class:`neuroplastic.core.fitted_lens.FittedLens`); the logit lens does nothing.
Translate = Callable[[Float[Tensor, "layers facts d_model"]], Float[Tensor, "layers facts d_model"]]


def first_tokens(
    model: Any, questions: Sequence[MultipleChoice], templates: Mapping[str, str] | None = None
) -> tuple[list[list[int]], Int[Tensor, "facts choices"]]:
    """Each question's prompt tokens (as :func:`neuroplastic.core.fact_scores.ask` reads them)
    and the first token of each of its choices after that prompt."""
    templates = {r: EVAL_TEMPLATES[r][0] for r in RELATIONS} | dict(templates or {})
    encode = _encoder(model.tokenizer)
    prompts, firsts = [], []
    for question in questions:
        prompt = prompt_for(question.fact, templates[question.fact.relation])
        joint = [encode(prompt, choice) for choice in question.choices]
        # The prompt as the model reads it before each choice, which must be one for all
        # (the lens reads the position that predicts every choice's first token).
        before = {tuple(e.ids[: e.continuation_start]) for e in joint}
        if len(before) != 1:
            raise NeuroplasticError(
                f"the tokenizer reads the prompt {prompt!r} differently before its choices: "
                "the lens has no one position to read"
            )
        prompts.append(list(before.pop()))
        firsts.append([e.ids[e.continuation_start] for e in joint])
    return prompts, torch.tensor(firsts)


def lens_log_probs(
    model: Any,
    prompts: Sequence[list[int]],
    choice_tokens: Int[Tensor, "facts choices"],
    translate: Translate | None = None,
) -> Float[Tensor, "layers facts choices"]:
    """The log-probability of each choice's first token read from each layer's residual (after
    the block) at each prompt's last token, through the final norm and the unembedding; with
    ``translate``, through it first (a fitted lens's per-layer maps)."""
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    tokens, mask = _right_padded(list(prompts), _pad_id(model.tokenizer))
    device = model_device(model)
    _, cache = model.run_with_cache(
        tokens.to(device), attention_mask=mask.to(device), names_filter=lambda n: n in names
    )
    last = torch.tensor([len(p) - 1 for p in prompts], device=device)
    rows = torch.arange(len(prompts), device=device)
    residual = torch.stack([cache[name][rows, last] for name in names])
    if translate is not None:
        residual = translate(residual)
    logits = model.unembed(model.ln_final(residual)).float()
    log_probs = logits.log_softmax(-1).cpu()
    index = einops.repeat(choice_tokens, "facts choices -> layers facts choices", layers=n_layers)
    return log_probs.gather(-1, index)


def lens_accuracies(
    model: Any,
    questions: Sequence[MultipleChoice],
    batch_size: int = 32,
    templates: Mapping[str, str] | None = None,
    translate: Translate | None = None,
) -> list[float]:
    """Per layer, the share of ``questions`` whose answer's first token the logit lens scores
    above every other choice's (strictly: choices that share the answer's first token count
    against it, as ties do in :func:`neuroplastic.core.fact_scores.multiple_choice_correct`).
    ``translate``: a fitted lens's maps, applied before the final norm."""
    if not questions:
        raise NeuroplasticError("no questions to read through the lens")
    prompts, choice_tokens = first_tokens(model, questions, templates)
    answers = torch.tensor([q.answer_index for q in questions])
    return choice_accuracies(model, prompts, choice_tokens, answers, batch_size, translate)


def choice_accuracies(
    model: Any,
    prompts: Sequence[list[int]],
    choice_tokens: Int[Tensor, "facts choices"],
    answers: Int[Tensor, " facts"],
    batch_size: int = 32,
    translate: Translate | None = None,
) -> list[float]:
    """:func:`lens_accuracies` of prompts given as tokens, each with its choices' first tokens
    and the index of its right one."""
    correct = []
    with _evaluating(model):
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            scores = lens_log_probs(model, prompts[chunk], choice_tokens[chunk], translate)
            answer = answers[chunk][None, :, None].expand(scores.shape[0], -1, 1)
            right = scores.gather(-1, answer)
            others = scores.scatter(-1, answer, -torch.inf)
            correct.append(right[..., 0] > others.max(-1).values)
    per_layer = torch.cat(correct, dim=1).float().mean(1)
    return [float(v) for v in per_layer]
