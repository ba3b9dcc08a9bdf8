"""Where a concept is linearly readable: a logistic-regression probe per layer's residual stream.

A run takes these probes at every stage's end. Their residual streams can be read off forwards
the stage runs anyway (the evaluation on the validation sentences, the statistics pass on the
probe sentences) by holding a :class:`ResidualTap` on them, instead of two more passes of their
own: :func:`probe_auc` runs its own passes, :func:`probe_auc_of` takes what taps kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from scipy.stats import rankdata
from torch import Tensor

from neuroplastic.core.models import capture_into, resid_hook_name, run_forward
from neuroplastic.data.concept import IGNORE_CONCEPT, Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError

#: the most residual-stream bytes :func:`probe_auc` holds at once (layers go in groups below it)
PROBE_MEMORY = 2 * 1024**3


@dataclass(frozen=True)
class Residuals:
    """Each layer's residual stream at a dataset's real tokens (not padding or special tokens),
    sentence by sentence in corpus order, and those tokens' concept-label ids."""

    layers: dict[int, Float[Tensor, "tokens d_model"]]
    labels: Int[Tensor, " tokens"]


class ResidualTap:
    """Keeps each layer's ``hook_resid_post`` at the real tokens of every batch the model runs
    while its :attr:`hooks` are held; call :meth:`record` after each batch's forward. The
    forward must reach :attr:`last_hook`. Whatever order the batches come in, and however they
    are padded, :meth:`residuals` gives the tokens in corpus order: the same rows one pass over
    the dataset in corpus order gives (to a float's last bits, as padding may move them)."""

    def __init__(self, layers: Sequence[int], n_sentences: int) -> None:
        if not layers:
            raise NeuroplasticError("a residual tap needs at least one layer")
        self.layer_list = sorted(set(layers))
        self.n_sentences = n_sentences
        self._batch: dict[int, Tensor] = {}
        self._sentences: dict[int, tuple[list[Tensor], Tensor]] = {}

    @property
    def hooks(self) -> list[tuple[str, Any]]:
        return [
            (resid_hook_name(layer), capture_into(self._batch, layer)) for layer in self.layer_list
        ]

    @property
    def last_hook(self) -> str:
        return resid_hook_name(self.layer_list[-1])

    def record(self, batch: Batch) -> None:
        """Keep the batch's real tokens from the activations its forward left in the hooks."""
        missing = [layer for layer in self.layer_list if layer not in self._batch]
        if missing:
            raise NeuroplasticError(
                f"the forward never reached blocks.{missing[0]}.hook_resid_post: run it to the "
                f"tap's last hook point, {self.last_hook}"
            )
        real = batch.concept_labels != IGNORE_CONCEPT
        per_layer = {layer: self._batch[layer].float().cpu() for layer in self.layer_list}
        for row, index in enumerate(batch.sentence_index.tolist()):
            if index in self._sentences:
                raise NeuroplasticError(f"sentence {index} went through the residual tap twice")
            mask = real[row]
            self._sentences[index] = (
                [per_layer[layer][row][mask] for layer in self.layer_list],
                batch.concept_labels[row][mask],
            )
        self._batch.clear()

    def residuals(self) -> Residuals:
        """What the tap kept, in corpus order; every sentence must have gone through it once."""
        if len(self._sentences) != self.n_sentences:
            raise NeuroplasticError(
                f"the residual tap saw {len(self._sentences)} of {self.n_sentences} sentences: "
                "run every sentence through the model with its hooks held (one process, not a "
                "share of them)"
            )
        order = sorted(self._sentences)
        layers = {
            layer: torch.cat([self._sentences[i][0][position] for i in order])
            for position, layer in enumerate(self.layer_list)
        }
        return Residuals(layers, torch.cat([self._sentences[i][1] for i in order]))


def tapped_residuals(
    model: Any, data: ConceptDataset, layers: Sequence[int], batch_size: int = 32
) -> Residuals:
    """One pass of its own over ``data`` in corpus order, stopping at the last layer's point."""
    tap = ResidualTap(layers, len(data))
    with torch.no_grad(), model.hooks(fwd_hooks=tap.hooks):
        for batch in data.batches(batch_size):
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=tap.last_hook)
            tap.record(batch)
    return tap.residuals()


def layers_that_fit(model: Any, datasets: Sequence[ConceptDataset]) -> int:
    """How many layers' residual streams over ``datasets`` fit in :data:`PROBE_MEMORY` as
    float32 (every token counted, special ones included); at least one."""
    tokens = sum(len(e.token_ids) for data in datasets for e in data.encoded)
    return max(1, PROBE_MEMORY // max(1, tokens * int(model.cfg.d_model) * 4))


def probe_auc(
    model: Any,
    train: ConceptDataset,
    test: ConceptDataset,
    concept: str,
    layers: Sequence[int],
    batch_size: int = 32,
    steps: int = 200,
) -> dict[int, float]:
    """Per layer, the ROC AUC on ``test``'s real tokens of a logistic-regression probe for the
    concept (its tokens against the rest) trained on ``train``'s residual stream (see
    :func:`probe_auc_of`), from passes of its own. Whatever hooks the model holds (an erasure,
    an ablation) apply. It draws no random numbers and leaves the model's mode as it is (call
    ``model.eval()`` first, or dropout applies to what the probe reads)."""
    concept_id = train.label_id(concept)
    # Layers in groups whose residual streams fit in PROBE_MEMORY: one pass per group (one in
    # all for the default model: 6 layers of 384 over ~13k tokens are 120 MB).
    size = layers_that_fit(model, (train, test))
    layers = list(layers)
    result: dict[int, float] = {}
    for start in range(0, len(layers), size):
        group = layers[start : start + size]
        result |= probe_auc_of(
            tapped_residuals(model, train, group, batch_size),
            tapped_residuals(model, test, group, batch_size),
            concept_id,
            steps,
            concept,
        )
    return result


def probe_auc_of(
    train: Residuals, test: Residuals, concept_id: int, steps: int = 200, concept: str = ""
) -> dict[int, float]:
    """Per layer of ``train``, the ROC AUC on ``test``'s tokens of a logistic-regression probe
    for the concept's tokens against the rest, trained on ``train``'s (standardised with
    ``train``'s mean and spread; L-BFGS from zero weights, a small L2 penalty). 0.5: not
    linearly readable."""
    y_train, y_test = train.labels == concept_id, test.labels == concept_id
    if y_train.all() or not y_train.any() or y_test.all() or not y_test.any():
        raise NeuroplasticError(
            f"a probe needs {concept or 'concept'} tokens and others in both splits"
        )
    return {
        layer: _auc(_fit_probe(x, y_train, steps), test.layers[layer], y_test)
        for layer, x in train.layers.items()
    }


def _fit_probe(x: Tensor, y: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mean) / std).double()
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    offset = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, offset], max_iter=steps, line_search_fn="strong_wolfe")
    target = y.double()

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + offset, target)
        value = value + 1e-3 * weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach(), mean, std


def _auc(probe: tuple[Tensor, Tensor, Tensor], x: Tensor, y: Tensor) -> float:
    weight, mean, std = probe
    scores = (((x - mean) / std).double() @ weight).numpy()
    ranks = rankdata(scores)  # ties share their mean rank: AUC 0.5 for a constant score
    positive = y.numpy()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


__all__ = [
    "PROBE_MEMORY",
    "ResidualTap",
    "Residuals",
    "probe_auc",
    "probe_auc_of",
    "layers_that_fit",
    "tapped_residuals",
]
