"""A fitted lens: each layer's residual mapped onto the last layer's before it is read.

The logit lens (:mod:`neuroplastic.core.fact_lens`) reads every layer through the model's final
norm and unembedding as they are. A layer whose basis is not yet the unembedding's reads near
chance whatever it holds: on SmolLM2 it reads V only at the last two layers, too late to tell
an answer that was removed from one that is still computed but no longer reaches the output.
A fitted lens ("tuned lens", Belrose et al. 2023) first maps layer ``l``'s residual by an affine
map fitted to predict the last layer's residual from it, then reads it as the logit lens does.
Here each map is ridge least squares in closed form, not SGD on a KL loss: no learning rate, no
initialisation, one answer for given text.

What the maps are fitted on: text with no fact in it (the facts study's general-ability
sentences), at every real token but each sentence's first. No fact the lens is asked about, or
that a removal was fitted on, is in what it learned. The first position sees only its own
token, so it is one vector for every sentence, and in SmolLM2 it is a massive attention sink
that would swamp the fit (:func:`neuroplastic.core.unlearning.after_first`).

What the maps predict (``targets``): by default the model's own last layer. The facts study
predicts *base's* last layer instead, on the same text, from each state's own residuals
(:func:`final_residuals`). Its maps then read each state's geometry at layer ``l`` into base's
output, whatever the state's later layers do to it. A cut downstream of ``l`` that general text
meets as well (a damaged downstream) would teach an own-target map to predict the damaged
output, and the lens would read the answer as gone where the layer still holds it. The last
layer is read as it is (the identity, exactly): there the lens is the state's own output, as
the logit lens's is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.core.fact_lens import lens_accuracies
from neuroplastic.core.fact_scores import _evaluating
from neuroplastic.core.models import capture_into, resid_hook_name, run_forward
from neuroplastic.core.unlearning import after_first
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.facts import MultipleChoice
from neuroplastic.errors import NeuroplasticError

#: The ridge strength as a share of the layer's mean variance per dimension: the penalty is
#: ``RIDGE * tr(S) / d`` with ``S`` the layer's centred scatter matrix (sum over tokens). Stated
#: against the layer's own scale, it shrinks as much in a layer of norm 1 as of norm 100 (the
#: residual's norm grows tenfold through SmolLM2). A hundredth leaves every direction holding
#: more than a hundredth of the mean variance almost untouched and keeps the rest, which a few
#: thousand tokens cannot pin down in hundreds of dimensions, from blowing up.
RIDGE = 0.01
#: ... plus this share of the layer's mean square per dimension (about the origin, not the
#: mean): the residuals are float32, so a spread below a millionth of their size is rounding,
#: and a penalty scaled to the spread alone would fit that rounding as if it were signal.
FLOOR = 1e-6


@dataclass(frozen=True)
class FittedLens:
    """Per layer, ``residual @ weight[l] + bias[l]``; the last layer's map is the identity."""

    weight: Float[Tensor, "layers d_in d_out"]
    bias: Float[Tensor, "layers d_out"]
    #: How many token positions the maps were fitted on.
    tokens: int
    ridge: float

    def __call__(
        self, residual: Float[Tensor, "layers facts d_model"]
    ) -> Float[Tensor, "layers facts d_model"]:
        weight, bias = self.weight.to(residual), self.bias.to(residual)
        mapped = einops.einsum(residual, weight, "layers facts i, layers i j -> layers facts j")
        return mapped + einops.rearrange(bias, "layers d -> layers 1 d")


def _positions(
    model: Any, text: ConceptDataset, batch_size: int
) -> Iterator[Float[Tensor, "layers tokens d_model"]]:
    """Per batch of ``text`` (shortest sentences first, so little is padding), every layer's
    residual after its block at the real tokens but each sentence's first, on the CPU. The
    forward pass stops at the last block: the vocabulary head is not needed."""
    n_layers = int(model.cfg.n_layers)
    last = resid_hook_name(n_layers - 1)
    with _evaluating(model):
        for batch in text.batches(batch_size, text.by_length()):
            captured: dict[int, Tensor] = {}
            hooks = [(resid_hook_name(i), capture_into(captured, i)) for i in range(n_layers)]
            with model.hooks(fwd_hooks=hooks):
                run_forward(model, batch.tokens, batch.attention_mask, stop_at=last)
            keep = after_first(batch.attention_mask).bool()
            yield torch.stack([captured[i].cpu()[keep] for i in range(n_layers)])


def final_residuals(
    model: Any, text: ConceptDataset, batch_size: int = 32
) -> Float[Tensor, "tokens d_model"]:
    """The last layer's residual at every position :func:`fit_lens` fits on, in its order:
    one model's output for another's maps to predict (``targets``)."""
    return torch.cat([x[-1] for x in _positions(model, text, batch_size)])


class _Moments:
    """Running sums for least squares of ``y`` on each layer's ``x``, in float64. The sums are
    taken about the first token's values (a shift by an observed row, so a layer that never
    varies sums to exactly zero): the residual's large means would otherwise leave the scatter
    as the small difference of two large numbers."""

    def __init__(self, x: Float[Tensor, "layers tokens d"], y: Float[Tensor, "tokens d"]) -> None:
        layers, _, d = x.shape
        self.shift_x, self.shift_y = x[:, 0].double(), y[0].double()
        self.n = 0
        self.sum_x = torch.zeros(layers, d, dtype=torch.float64)
        self.sum_y = torch.zeros(y.shape[-1], dtype=torch.float64)
        self.xx = torch.zeros(layers, d, d, dtype=torch.float64)
        self.xy = torch.zeros(layers, d, y.shape[-1], dtype=torch.float64)

    def add(self, x: Float[Tensor, "layers tokens d"], y: Float[Tensor, "tokens d"]) -> None:
        centred_y = y.double() - self.shift_y
        self.n += y.shape[0]
        self.sum_y += centred_y.sum(0)
        # One layer at a time: a float64 copy of every layer at once would be the largest
        # thing the fit holds (30 layers of a batch of SmolLM2: about 200 MB).
        for layer in range(x.shape[0]):
            centred = x[layer].double() - self.shift_x[layer]
            self.sum_x[layer] += centred.sum(0)
            self.xx[layer] += einops.einsum(centred, centred, "tokens i, tokens j -> i j")
            self.xy[layer] += einops.einsum(centred, centred_y, "tokens i, tokens j -> i j")

    def solve(
        self, ridge: float, floor: float
    ) -> tuple[Float[Tensor, "layers d_in d_out"], Float[Tensor, "layers d_out"]]:
        """Ridge least squares with an unpenalised intercept: on the centred sums,
        ``W = (S + lambda I)^-1 C`` and ``b = mean(y) - mean(x) W``, with
        ``lambda = (ridge tr(S) + floor sum|x|^2) / d``."""
        mean_x, mean_y = self.sum_x / self.n, self.sum_y / self.n
        scatter = self.xx - self.n * einops.einsum(
            mean_x, mean_x, "layers i, layers j -> layers i j"
        )
        cross = self.xy - self.n * einops.einsum(mean_x, mean_y, "layers i, j -> layers i j")
        d = scatter.shape[-1]
        trace = einops.einsum(scatter, "layers i i -> layers")
        mean = self.shift_x + mean_x
        square = trace + self.n * einops.einsum(mean, mean, "layers i, layers i -> layers")
        strength = (ridge * trace + floor * square) / d
        # A layer that is zero throughout has S = C = 0: any penalty gives W = 0.
        strength = torch.where(strength > 0, strength, torch.ones_like(strength))
        eye = torch.eye(d, dtype=torch.float64)
        weight = torch.linalg.solve(scatter + strength[:, None, None] * eye, cross)
        bias = (
            self.shift_y + mean_y - einops.einsum(mean, weight, "layers i, layers i j -> layers j")
        )
        return weight, bias


def fit_lens(
    model: Any,
    text: ConceptDataset,
    ridge: float = RIDGE,
    batch_size: int = 32,
    targets: Float[Tensor, "tokens d_model"] | None = None,
) -> FittedLens:
    """Each layer's map onto the last layer's residual, fitted by ridge least squares at every
    real token of ``text`` but each sentence's first, streaming (memory is two d x d matrices
    per layer, whatever the text). ``targets``: what to predict at those positions, as
    :func:`final_residuals` gives it (default: this model's own last layer)."""
    moments: _Moments | None = None
    taken = 0
    for x in _positions(model, text, batch_size):
        if targets is None:
            y = x[-1]
        else:
            y = targets[taken : taken + x.shape[1]]
            if y.shape[0] != x.shape[1]:
                raise NeuroplasticError("the lens's targets were taken on other text")
        taken += x.shape[1]
        if moments is None:
            moments = _Moments(x, y)
        moments.add(x, y)
    if moments is None or moments.n == 0:
        raise NeuroplasticError("no token to fit the lens on: every sentence is one token")
    if targets is not None and taken != targets.shape[0]:
        raise NeuroplasticError("the lens's targets were taken on other text")
    weight, bias = moments.solve(ridge, FLOOR)
    # The last layer is the model's output: read it as it is. Fitted, it would be the identity
    # shrunk by the ridge, or (base's targets) another model's output.
    weight[-1] = torch.eye(weight.shape[-1], dtype=weight.dtype)
    bias[-1] = 0.0
    return FittedLens(weight.float(), bias.float(), tokens=moments.n, ridge=ridge)


def fitted_lens_accuracies(
    model: Any,
    questions: Sequence[MultipleChoice],
    text: ConceptDataset,
    targets: Float[Tensor, "tokens d_model"] | None = None,
    ridge: float = RIDGE,
    templates: Mapping[str, str] | None = None,
) -> list[float]:
    """Per layer, the share of ``questions`` whose answer the fitted lens reads first (as
    :func:`neuroplastic.core.fact_lens.lens_accuracies` does), the maps fitted on this model
    and ``text`` (see :func:`fit_lens` for ``targets``)."""
    lens = fit_lens(model, text, ridge, targets=targets)
    return lens_accuracies(model, questions, templates=templates, translate=lens)
