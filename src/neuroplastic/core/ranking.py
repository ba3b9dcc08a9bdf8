"""Rank neurons by saliency for a concept label from streaming statistics.

Every ranker produces raw scores; ``Ranking`` turns them into a normalized saliency in [0, 1]
(1 = most salient, from the rank, as in Lo et al.) so two checkpoints or two rankers compare.
Only live neurons are ranked: an ablated neuron (exactly zero on every token) has no saliency
(NaN), and ties share their average rank, so neither dead neurons nor index order can move the
saliency of the live ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from scipy.stats import rankdata
from torch import Tensor

from neuroplastic.config import RANK_METHOD, RANKER_NAMES
from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError

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


def ratio_scores(stats: NeuronStats, concept: str) -> Scores:
    """The mean squared activation on the concept's tokens over that on every other token:
    the forget/retain activation ratio that unlearning work ranks neurons by (with concept =
    forget, and the rest the retain tokens). Squared, so a neuron strongly negative on the
    concept counts too (SwiGLU products take either sign). Both means are over tokens; a
    neuron silent everywhere scores 0/0 -> 1, as if it did not care."""
    z = _concept_index(stats, concept)
    n_out = (stats.count.sum() - stats.count[z]).double()
    if n_out == 0:
        raise NeuroplasticError(f"every token is labelled {concept!r}; nothing to contrast with")
    square_in = stats.sum_sq[z] / stats.count[z].double()
    square_out = (stats.sum_sq.sum(0) - stats.sum_sq[z]) / n_out
    # A floor far below any activation's square keeps the ratio finite: a neuron that never
    # fires outside the concept ranks by its square on the concept, times a large constant.
    tiny = 1e-12
    return ((square_in + tiny) / (square_out + tiny)).float()


RANKERS: dict[str, Callable[[NeuronStats, str], Scores]] = {
    "probeless": probeless_scores,
    "smd": smd_scores,
    "selectivity": selectivity_scores,
    "ratio": ratio_scores,
}
assert tuple(RANKERS) == RANKER_NAMES  # the names settings are checked against, without torch


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


def alive_neurons(stats: NeuronStats) -> Bool[Tensor, "layer neuron"]:
    """False where a neuron never fired on any token (exactly zero: an ablated neuron)."""
    return stats.sum_sq.sum(0) > 0


@dataclass
class Ranking:
    """Scores, normalized saliency and ranks of the live neurons for one concept at one
    checkpoint.

    A dead neuron (ablated: exactly zero on every token) has no saliency. It is left out of the
    ranking: its score is ``-inf`` in ``scores`` (so a descending sort puts it last), and its
    saliency and ranks are NaN. ``alive`` defaults to the finite scores; given explicitly, the
    scores of the neurons it marks dead are set to ``-inf``.
    """

    concept: str
    method: str
    scores: Scores
    alive: Bool[Tensor, "layer neuron"] | None = None

    def __post_init__(self) -> None:
        finite = self.scores > float("-inf")  # NaN and -inf: not ranked
        self.alive = finite if self.alive is None else self.alive.bool() & finite
        self.scores = self.scores.masked_fill(~self.alive, float("-inf"))

    @classmethod
    def from_stats(cls, stats: NeuronStats, concept: str, method: str = RANK_METHOD) -> Ranking:
        if method not in RANKERS:
            raise NeuroplasticError(
                f"unknown ranking method {method!r}; choose one of {', '.join(RANKERS)}"
            )
        # A neuron that never fired carries no concept, whatever a ranker's formula makes of
        # all-zero statistics (selectivity would give it margin 0, above most live neurons).
        return cls(concept, method, RANKERS[method](stats, concept), alive_neurons(stats))

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.scores.shape[1]

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())

    @property
    def global_rank(self) -> Float[Tensor, "layer neuron"]:
        """0 = most salient of the live neurons over all layers; ties share their average rank;
        NaN for dead neurons."""
        return _descending_rank(self.scores.flatten(), self.alive.flatten()).view_as(self.scores)

    @property
    def layer_rank(self) -> Float[Tensor, "layer neuron"]:
        """0 = most salient of the live neurons in its layer; ties averaged; NaN for dead."""
        return torch.stack(
            [
                _descending_rank(self.scores[layer], self.alive[layer])
                for layer in range(self.n_layers)
            ]
        )

    @property
    def saliency(self) -> Float[Tensor, "layer neuron"]:
        """Normalized rank among the live neurons: 1 for the most salient, 0 for the least
        (ties get their average); NaN for dead neurons."""
        return (1 - self.global_rank / max(self.n_alive - 1, 1)).float()

    def saliency_among(self, among: Bool[Tensor, "layer neuron"]) -> Float[Tensor, "layer neuron"]:
        """Normalized rank among the neurons ``among`` alone, in float64: 1 for the most
        salient, 0 for the least, ties averaged; NaN elsewhere. Comparing two stages on one
        such set measures each neuron's movement against the same neurons, never against ones
        that died, regrew or were removed in between."""
        among = among.bool() & self.alive
        rank = _descending_rank(self.scores.flatten(), among.flatten()).view_as(self.scores)
        return 1 - rank / max(int(among.sum()) - 1, 1)

    def order(self) -> Int[Tensor, " alive"]:
        """Flat indices (layer * d_mlp + neuron) of the live neurons, most salient first (ties
        in index order)."""
        return torch.argsort(-self.scores.flatten(), stable=True)[: self.n_alive]

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` most salient live neurons as ``(layer, neuron)``."""
        if k > self.n_alive:
            raise NeuroplasticError(
                f"cannot choose {k} neurons: only {self.n_alive} of {self.scores.numel()} "
                "neurons are alive (the others never fired: ablated or dead) and can be ranked"
            )
        return [divmod(int(i), self.d_mlp) for i in self.order()[:k]]

    def to_frame(self) -> pd.DataFrame:
        """One row per neuron, most salient first, dead neurons last with NaN score, saliency
        and ranks."""
        layer, neuron = torch.meshgrid(
            torch.arange(self.n_layers), torch.arange(self.d_mlp), indexing="ij"
        )
        scores = self.scores.masked_fill(~self.alive, float("nan"))
        frame = pd.DataFrame(
            {
                "layer": layer.flatten().numpy(),
                "neuron": neuron.flatten().numpy(),
                "score": scores.flatten().numpy(),
                "saliency": self.saliency.flatten().numpy(),
                "rank": self.global_rank.flatten().numpy(),
                "layer_rank": self.layer_rank.flatten().numpy(),
            }
        )
        order = torch.cat([self.order(), torch.nonzero(~self.alive.flatten()).flatten()])
        return frame.iloc[order.numpy()].reset_index(drop=True)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, concept: str, method: str) -> Ranking:
        """The inverse of :meth:`to_frame`: a NaN score marks a dead neuron."""
        n_layers, d_mlp = int(frame["layer"].max()) + 1, int(frame["neuron"].max()) + 1
        scores = torch.full((n_layers, d_mlp), float("nan"))
        scores[frame["layer"].to_numpy().copy(), frame["neuron"].to_numpy().copy()] = torch.tensor(
            frame["score"].to_numpy().copy(), dtype=torch.float32
        )
        return cls(concept, method, scores)


def _descending_rank(scores: Float[Tensor, " n"], alive: Bool[Tensor, " n"]) -> Float[Tensor, " n"]:
    """0-based rank from the largest score among ``alive``, ties averaged; NaN elsewhere."""
    rank = torch.full(scores.shape, float("nan"), dtype=torch.float64)
    live = scores[alive].double().numpy()
    if len(live):
        # rankdata ranks from the smallest (1-based): count down from the number alive.
        rank[alive] = torch.from_numpy(len(live) - rankdata(live, method="average"))
    return rank
