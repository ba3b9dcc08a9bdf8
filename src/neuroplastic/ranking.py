"""Rank neurons by saliency for a concept label from streaming statistics.

Every ranker produces raw scores; ``Ranking`` turns them into a normalized saliency in [0, 1]
(1 = most salient, from the rank, as in Lo et al.) so two checkpoints or two rankers compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from neuroplastic.errors import NeuroplasticError
from neuroplastic.stats import NeuronStats

Scores = Float[Tensor, "layer neuron"]


def probeless_scores(stats: NeuronStats, concept: str) -> Scores:
    """Antverg & Belinkov (2022): r(z) = sum over z' != z of |q(z) - q(z')|, q = mean activation.

    Labels without tokens are left out of the sum (their mean is undefined).
    """
    z = _concept_index(stats, concept)
    means = stats.mean()
    others = [i for i in range(len(stats.label_names)) if i != z and stats.count[i] > 0]
    return (means[z] - means[others]).abs().sum(0).float()


def smd_scores(stats: NeuronStats, concept: str) -> Scores:
    """|standardized mean difference| (Cohen's d) between concept tokens and all other tokens."""
    z = _concept_index(stats, concept)
    n_in = stats.count[z].double()
    n_out = (stats.count.sum() - stats.count[z]).double()
    if n_out == 0:
        raise NeuroplasticError(f"every token is labelled {concept!r}; nothing to contrast with")
    sum_out, sq_out = stats.sum.sum(0) - stats.sum[z], stats.sum_sq.sum(0) - stats.sum_sq[z]
    mean_in, mean_out = stats.sum[z] / n_in, sum_out / n_out
    var_in = (stats.sum_sq[z] / n_in - mean_in**2).clamp(min=0)
    var_out = (sq_out / n_out - mean_out**2).clamp(min=0)
    pooled = ((n_in * var_in + n_out * var_out) / (n_in + n_out)).sqrt()
    return ((mean_in - mean_out).abs() / (pooled + 1e-8)).float()


def selectivity_scores(stats: NeuronStats, concept: str) -> Scores:
    """How well a neuron singles the concept out from *every* other label: the smallest
    standardized margin min over z' != z of (q(z) - q(z')) / sd(z, z').

    Probeless and SMD also reward neurons that separate all entities from ``O`` (or fire
    *less* on the concept), so their top neurons carry other entity types too; this ranker
    keeps neurons that fire more on the concept than on each other label, one by one.
    """
    z = _concept_index(stats, concept)
    means, variances = stats.mean(), stats.variance()
    margins = [
        (means[z] - means[other]) / ((variances[z] + variances[other]) / 2 + 1e-8).sqrt()
        for other in range(len(stats.label_names))
        if other != z and stats.count[other] > 0
    ]
    # Not floored at zero: negative margins still order the unselective majority, so saliency
    # (the normalized rank) never falls back on index order among ties.
    return torch.stack(margins).min(0).values.float()


RANKERS: dict[str, Callable[[NeuronStats, str], Scores]] = {
    "probeless": probeless_scores,
    "smd": smd_scores,
    "selectivity": selectivity_scores,
}


def _concept_index(stats: NeuronStats, concept: str) -> int:
    z = stats.label_index(concept)
    if stats.count[z] == 0:
        raise NeuroplasticError(
            f"concept {concept!r} has no tokens in the data; token counts per label: "
            + ", ".join(
                f"{n}={int(c)}" for n, c in zip(stats.label_names, stats.count, strict=True)
            )
        )
    return z


@dataclass
class Ranking:
    """Scores, normalized saliency and ranks of every neuron for one concept at one checkpoint."""

    concept: str
    method: str
    scores: Scores

    @classmethod
    def from_stats(cls, stats: NeuronStats, concept: str, method: str = "probeless") -> Ranking:
        if method not in RANKERS:
            raise NeuroplasticError(
                f"unknown ranking method {method!r}; choose one of {', '.join(RANKERS)}"
            )
        scores = RANKERS[method](stats, concept)
        # A neuron that never fired (an ablated one, exactly zero) carries no concept, whatever
        # a ranker's formula makes of all-zero statistics (selectivity would give it margin 0,
        # above most live neurons): rank it last.
        dead = stats.sum_sq.sum(0) == 0
        return cls(concept, method, scores.masked_fill(dead, float("-inf")))

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.scores.shape[1]

    @property
    def global_rank(self) -> Int[Tensor, "layer neuron"]:
        """0 = most salient over all layers; ties broken by (layer, neuron) order."""
        order = self.order()
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        return rank.view(self.n_layers, self.d_mlp)

    @property
    def layer_rank(self) -> Int[Tensor, "layer neuron"]:
        """0 = most salient within its layer."""
        order = torch.argsort(-self.scores, dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(self.d_mlp).expand_as(order).contiguous())
        return rank

    @property
    def saliency(self) -> Float[Tensor, "layer neuron"]:
        """Normalized rank: 1 for the most salient neuron, 0 for the least."""
        n = self.scores.numel()
        return 1 - self.global_rank.float() / max(n - 1, 1)

    def order(self) -> Int[Tensor, " neurons"]:
        """Flat indices (layer * d_mlp + neuron), most salient first."""
        return torch.argsort(-self.scores.flatten(), stable=True)

    def top(self, k: int) -> list[tuple[int, int]]:
        return [divmod(int(i), self.d_mlp) for i in self.order()[:k]]

    def to_frame(self) -> pd.DataFrame:
        """One row per neuron, most salient first."""
        layer, neuron = torch.meshgrid(
            torch.arange(self.n_layers), torch.arange(self.d_mlp), indexing="ij"
        )
        frame = pd.DataFrame(
            {
                "layer": layer.flatten().numpy(),
                "neuron": neuron.flatten().numpy(),
                "score": self.scores.flatten().numpy(),
                "saliency": self.saliency.flatten().numpy(),
                "rank": self.global_rank.flatten().numpy(),
                "layer_rank": self.layer_rank.flatten().numpy(),
            }
        )
        return frame.sort_values("rank", kind="stable").reset_index(drop=True)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, concept: str, method: str) -> Ranking:
        n_layers, d_mlp = int(frame["layer"].max()) + 1, int(frame["neuron"].max()) + 1
        scores = torch.zeros(n_layers, d_mlp)
        scores[frame["layer"].to_numpy().copy(), frame["neuron"].to_numpy().copy()] = torch.tensor(
            frame["score"].to_numpy().copy(), dtype=torch.float32
        )
        return cls(concept, method, scores)
