"""Does the concept move to earlier layers? (Lo, Cohen & Barez 2024.)

:func:`relocation`, :func:`layer_saliency`, :func:`concept_depth`: mean saliency of the live
neurons per layer, the share of the top-salient neurons in each layer and their saliency-weighted
mean layer, per stage. Movement is measured on one fixed population (:func:`fixed_population`),
apart from the shift that removing the top tier causes by itself at the pruned stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.errors import NeuroplasticError

__all__ = ["Relocation", "concept_depth", "fixed_population", "layer_saliency", "relocation"]


def _n_top(top: int | float, total: int) -> int:
    """``top`` neurons if an int, else that fraction of ``total`` (at least one)."""
    if isinstance(top, bool) or top <= 0:
        raise NeuroplasticError(f"top must be a positive count or fraction, got {top}")
    if isinstance(top, float):
        if top > 1:
            raise NeuroplasticError(f"a top fraction must be in (0, 1], got {top}")
        return max(1, round(top * total))
    return min(int(top), total)


def fixed_population(
    rankings: Mapping[str, Ranking], exclude: NeuronSet | None = None
) -> Bool[Tensor, "layer neuron"]:
    """The neurons alive at every stage and outside ``exclude`` (pass the arm's removed set):
    one population whose ranking can be compared across stages. Removing the top tier changes
    which neurons are "the most salient" with no training at all; on this population it cannot.
    """
    if not rankings:
        raise NeuroplasticError("no stages: no population to compare across them")
    population = torch.ones_like(next(iter(rankings.values())).alive, dtype=torch.bool)
    for ranking in rankings.values():
        population &= ranking.alive
    if exclude is not None:
        population &= ~exclude.mask()
    return population


def layer_saliency(
    rankings: Mapping[str, Ranking],
    top: int | float = 0.01,
    population: Bool[Tensor, "layer neuron"] | None = None,
) -> pd.DataFrame:
    """Per stage and layer: the saliency of the live neurons (mean, median, quartiles), and
    which layers hold the most salient neurons.

    ``top`` (a count, or a fraction of all neurons, at most the live ones) picks the most
    salient live neurons of each stage, among ``population`` only when given (pass
    :func:`fixed_population`, so that every stage's top set is drawn from the same neurons);
    ``top_share`` is the fraction of them in the layer. Columns: stage, layer, n (neurons in
    the layer), n_alive, mean, median, q25, q75 (of the live neurons' saliency; NaN when none
    is alive), top_count, top_share. Descriptions of one run, not estimates with an error.
    """
    rows = []
    for stage, ranking in rankings.items():
        saliency = ranking.saliency.double()
        top_layers = _top_layers(ranking, top, population)
        for layer in range(ranking.n_layers):
            values = saliency[layer][ranking.alive[layer]].numpy()
            quartiles = np.quantile(values, [0.25, 0.5, 0.75]) if len(values) else [np.nan] * 3
            count = int((top_layers == layer).sum())
            rows.append(
                {
                    "stage": stage,
                    "layer": layer,
                    "n": ranking.d_mlp,
                    "n_alive": len(values),
                    "mean": float(values.mean()) if len(values) else float("nan"),
                    "median": float(quartiles[1]),
                    "q25": float(quartiles[0]),
                    "q75": float(quartiles[2]),
                    "top_count": count,
                    "top_share": count / len(top_layers),
                }
            )
    return pd.DataFrame(rows)


def concept_depth(
    rankings: Mapping[str, Ranking],
    top: int | float = 0.01,
    population: Bool[Tensor, "layer neuron"] | None = None,
) -> pd.DataFrame:
    """The saliency-weighted mean layer of the ``top`` live neurons per stage (a count, or a
    fraction of all neurons; at most the live ones), drawn from ``population`` only when given.

    Without a population each stage takes its own top set: after pruning that set is a
    different population (the removed top tier is gone), so a change between stages mixes the
    removal with any movement. Use :func:`relocation` to tell them apart.

    Weights are the saliency *within the top set* (1 for the first, falling linearly to 1/n_top):
    the global saliency of a top-1% neuron is 0.99-1.0, which would make every weight the same.
    One number per stage and run; its spread comes from seeds (``neuroplastic sweep``).

    Columns: stage, n_alive, n_top, mean_layer.
    """
    rows = []
    for stage, ranking in rankings.items():
        layers = _top_layers(ranking, top, population).double().numpy()
        n_top = len(layers)
        weights = 1 - np.arange(n_top, dtype=np.float64) / n_top
        rows.append(
            {
                "stage": stage,
                "n_alive": ranking.n_alive,
                "n_top": n_top,
                "mean_layer": float((layers * weights).sum() / weights.sum()),
            }
        )
    return pd.DataFrame(rows)


def _top_layers(
    ranking: Ranking, top: int | float, population: Bool[Tensor, "layer neuron"] | None = None
) -> Int[Tensor, " n_top"]:
    """The layer of each of the ``top`` most salient live neurons (of ``population`` when
    given), most salient first."""
    order = ranking.order()
    if population is not None:
        order = order[population.flatten()[order]]
    n_top = min(_n_top(top, ranking.scores.numel()), len(order))
    if n_top == 0:
        raise NeuroplasticError(
            "no neuron is alive: nothing to rank"
            if population is None
            else "no neuron of the population is alive: nothing to rank"
        )
    return order[:n_top] // ranking.d_mlp


@dataclass
class Relocation:
    """Does the concept move between layers while retraining? Measured apart from what the
    removal itself does to the top set.

    ``shift`` is the change of the saliency-weighted mean layer of the top neurons from
    ``start`` (pruned) to ``end`` (last), with every stage's top set drawn from one fixed
    population (alive at every stage of the arm, outside its removed set): movement, and only
    movement. ``removal_shift`` is the change from ``first`` (base) to ``start`` with each of
    the two stages taking its own top set: no training happens in between, so it is what
    removing the top tier does to "the top neurons" by itself. A negative value means earlier
    layers. Descriptions of one run; intervals come from seeds.
    """

    shift: float
    removal_shift: float
    #: base to last on the fixed population (the base's top set there excludes the removed)
    fixed_base_to_last: float
    n_population: int
    first: str
    start: str
    end: str
    population: Bool[Tensor, "layer neuron"]
    #: stage, n_alive, n_top, mean_layer (the stage's own top set), n_population,
    #: mean_layer_fixed (top set drawn from the fixed population)
    depth: pd.DataFrame


def relocation(
    rankings: Mapping[str, Ranking],
    removed: NeuronSet,
    top: int | float = 0.01,
    start: str | None = None,
) -> Relocation:
    """The concept's movement between layers during retraining, on one fixed population, and
    the removal's own shift of the top set (see :class:`Relocation`).

    ``rankings`` in stage order, the first before the removal; ``start`` (default ``pruned``
    when present, else the second stage) is the first stage with ``removed`` held."""
    names = list(rankings)
    if len(names) < 2:
        raise NeuroplasticError(
            f"relocation compares stages: need the base and at least one more, got {names}"
        )
    first, end = names[0], names[-1]
    start = start or ("pruned" if "pruned" in rankings else names[1])
    if start not in rankings:
        raise NeuroplasticError(f"no stage {start!r}; stages: {', '.join(names)}")
    population = fixed_population(rankings, removed)
    own = concept_depth(rankings, top)
    fixed = concept_depth(rankings, top, population).set_index("stage")
    depth = own.assign(
        n_population=int(population.sum()),
        mean_layer_fixed=own["stage"].map(fixed["mean_layer"]),
    )
    by_stage = depth.set_index("stage")
    return Relocation(
        shift=float(
            by_stage.loc[end, "mean_layer_fixed"] - by_stage.loc[start, "mean_layer_fixed"]
        ),
        removal_shift=float(by_stage.loc[start, "mean_layer"] - by_stage.loc[first, "mean_layer"]),
        fixed_base_to_last=float(
            by_stage.loc[end, "mean_layer_fixed"] - by_stage.loc[first, "mean_layer_fixed"]
        ),
        n_population=int(population.sum()),
        first=first,
        start=start,
        end=end,
        population=population,
        depth=depth,
    )
