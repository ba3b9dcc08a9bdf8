"""How a state of the facts study is scored: the loss that teaches a fact (:func:`answer_loss`),
the general-ability loss, the accuracies on each part's questions and through the lenses
(:func:`measure`), and ``scores.jsonl``, one line per measured state (:class:`Scores`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.core.fact_lens import lens_accuracies
from neuroplastic.core.fact_scores import accuracies, ask
from neuroplastic.core.fitted_lens import fitted_lens_accuracies
from neuroplastic.core.models import model_device
from neuroplastic.core.training import lm_token_losses
from neuroplastic.data.concept import Batch, ConceptDataset
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.io import atomic_write_text


def answer_loss(model: Any, batch: Batch) -> Tensor:
    """Next-token loss on the answer's tokens only: the fact is what is taught, not its
    phrasing (every token of a rendered fact is ``O`` but the answer's)."""
    losses: Float[Tensor, "batch pos_minus_1"] = lm_token_losses(model, batch)
    answer = (batch.concept_labels[:, 1:] > 0) & batch.attention_mask[:, 1:].bool()
    return (losses * answer).sum() / answer.sum().clamp(min=1)


def general_loss(model: Any, data: ConceptDataset, batch_size: int = 32) -> float:
    """The mean next-token loss over every real token of ``data`` (token-weighted)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.batches(batch_size, data.by_length()):
            batch = batch.to(model_device(model))
            mask = batch.attention_mask[:, 1:].float()
            total += float((lm_token_losses(model, batch) * mask).sum())
            count += int(mask.sum())
    return total / count


#: The lenses a state is read through, by their part in its scores: the logit lens
#: (:mod:`neuroplastic.core.fact_lens`) and the fitted lens (:mod:`neuroplastic.core.fitted_lens`).
LENSES = ("forget_v_lens", "forget_v_fitted")


def measure(
    model: Any,
    data: StudyData,
    parts: Sequence[str],
    lens_targets: Float[Tensor, "tokens d_model"] | None = None,
) -> dict[str, Any]:
    """The model's accuracy on each part's questions (multiple choice and greedy); with
    ``"general"`` among ``parts``, its general-ability loss; with ``"forget_v_lens"``, V's
    multiple choice read at every layer through the logit lens
    (:mod:`neuroplastic.core.fact_lens`); with ``"forget_v_fitted"``, through the fitted lens,
    its maps fitted on this model and the general-ability sentences to predict
    ``lens_targets`` (base's last layer there: :func:`neuroplastic.core.fitted_lens.fit_lens`).
    """
    out: dict[str, Any] = {}
    for part in parts:
        if part == "general":
            out["general_loss"] = general_loss(model, data.general)
        elif part in LENSES:
            # A model without TransformerLens's hook points (a planted toy) has no residual
            # stream to read: no lens for it.
            if not hasattr(model, "run_with_cache"):
                continue
            questions = data.questions["forget_v"]
            out[part] = (
                lens_accuracies(model, questions)
                if part == "forget_v_lens"
                else fitted_lens_accuracies(model, questions, data.general, lens_targets)
            )
        elif part not in data.questions:
            continue  # (held-out facts, in a study that holds none out)
        else:
            out[part] = accuracies(ask(model, data.questions[part]))
    return out


class Scores:
    """``scores.jsonl``: one line per measured state, the file rewritten atomically as soon as
    a state is measured (a kill leaves the last whole file; a torn line is redone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.states: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                # A line torn by a kill is the last one, and its state is simply redone.
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    self.states[record["state"]] = record

    def add(self, record: dict[str, Any]) -> None:
        self.states[record["state"]] = record
        lines = [json.dumps(r, sort_keys=True) for r in self.states.values()]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
