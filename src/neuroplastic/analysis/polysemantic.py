"""Neurons whose top tokens blend the concept with other labels, stage by stage.

Per-stage shares are taken over one fixed population, the neurons alive at every stage and
outside the ablated set (:func:`common_population` of a run's arms, so that the arms' counts
compare), so a change of denominator cannot pass for a change of behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from neuroplastic.analysis.arm_run import ArmRun, concept_share
from neuroplastic.analysis.layers import fixed_population
from neuroplastic.config import CONCEPT_ARM, RANDOM_ARM
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError

__all__ = [
    "Polysemanticity",
    "arm_polysemanticity",
    "common_population",
    "control_pair_population",
    "concept_base_rate",
    "mixing_band",
    "polysemantic_gainers",
    "polysemanticity",
]


@dataclass
class Polysemanticity:
    """Neurons whose top-k tokens mix the concept with other labels, stage by stage, counted
    over one fixed population (``population``: alive at every stage, outside ``exclude``)."""

    concept: str
    low: float
    high: float
    #: the neurons counted at every stage
    population: Bool[Tensor, "layer neuron"]
    #: stage, n_population, n_alive (alive at the stage, outside ``exclude``), n_concept
    #: (share >= high), n_polysemantic, n_new (not polysemantic at the first stage),
    #: n_with_entity (polysemantic, and mixed with another entity type, not the outside label),
    #: polysemantic_share (of the population): all but n_alive over the population
    counts: pd.DataFrame
    #: stage, layer, neuron, concept_share, labels ({label: count}), mixed_with (the most
    #: common other label among its top tokens), tokens, new
    neurons: pd.DataFrame
    #: whether [low, high] is the concept's mixing band (:func:`mixing_band`), not given
    from_base_rate: bool = True

    #: Readable headers of :attr:`counts`, for tables.
    HEADERS = {
        "stage": "stage",
        "n_population": "neurons counted",
        "n_alive": "alive at the stage",
        "n_concept": "concept only (share above the band)",
        "n_polysemantic": "polysemantic",
        "n_new": "newly polysemantic",
        "n_with_entity": "polysemantic, mixed with another entity type",
        "polysemantic_share": "polysemantic share of those counted",
    }

    def definition(self) -> str:
        """The one definition, in words, for every page that counts these neurons."""
        why = (
            " (at least twice the concept's share of all tokens, and at most one minus it, so "
            "other labels hold at least as much as the concept does of all tokens)"
            if self.from_base_rate
            else " (a band given explicitly)"
        )
        return (
            f"polysemantic for {self.concept}: between {self.low:.0%} and {self.high:.0%} of "
            f"the neuron's top activating tokens are labelled {self.concept}{why}; what it is "
            "mixed with is the most common other label among those tokens (an entity type "
            "where one ties with the outside label O)"
        )

    @property
    def n_population(self) -> int:
        return int(self.population.sum())

    def examples(self, stage: str, n: int = 10) -> pd.DataFrame:
        """Up to ``n`` polysemantic neurons at ``stage``, newly polysemantic ones first, then
        the most even mixes."""
        rows = self.neurons[self.neurons["stage"] == stage].copy()
        rows["evenness"] = -(rows["concept_share"] - 0.5).abs()
        rows = rows.sort_values(
            ["new", "evenness", "layer", "neuron"],
            ascending=[False, False, True, True],
            kind="stable",
        )
        return rows.drop(columns="evenness").head(n).reset_index(drop=True)


def concept_base_rate(stats: NeuronStats, concept: str) -> float:
    """The share of all tokens labelled ``concept``: what a neuron's top tokens would hold of
    it by chance."""
    count = stats.count.double()
    return float(count[stats.label_index(concept)] / count.sum())


def mixing_band(base_rate: float) -> tuple[float, float]:
    """The shares of concept tokens among a neuron's top tokens that count as a mix, relative
    to the concept's share of all tokens p: at least 2p (the concept enriched twice over
    chance) and at most 1 - p (other labels still hold at least the concept's own share).
    LOC, about 12% of tokens: [0.24, 0.88]."""
    low, high = 2 * base_rate, 1 - base_rate
    if not 0 < low <= high < 1:
        raise NeuroplasticError(
            f"the concept is {base_rate:.0%} of all tokens: no mixing band relative to it "
            "(need under a third); give low and high explicitly"
        )
    return low, high


def common_population(arms: Mapping[str, ArmRun]) -> Bool[Tensor, "layer neuron"]:
    """Neurons alive at every stage of every arm and outside every arm's removed set: the one
    population over which arms' counts can be compared (churn in a control counts too)."""
    masks = [fixed_population(arm.rankings(), arm.ablated) for arm in arms.values()]
    if not masks:
        raise NeuroplasticError("no arms: no common population")
    population = masks[0].clone()
    for mask in masks[1:]:
        population &= mask
    return population


def control_pair_population(arms: Mapping[str, ArmRun]) -> Bool[Tensor, "layer neuron"]:
    """:func:`common_population` of the concept arm and its control (the pair a paired
    difference compares), or of every arm in a run without that pair: what other arms a run
    happens to have (a chase's, a pre-emption's) does not change the neurons compared."""
    pair = {arm: arms[arm] for arm in (CONCEPT_ARM, RANDOM_ARM) if arm in arms}
    return common_population(pair if len(pair) == 2 else arms)


def arm_polysemanticity(
    arm: ArmRun, population: Bool[Tensor, "layer neuron"] | None = None
) -> Polysemanticity:
    """:func:`polysemanticity` of one arm's stages, its removed neurons excluded, over
    ``population`` (:func:`common_population` of the run's arms, as the report counts)."""
    return polysemanticity(
        arm.stats(), arm.concept, vocabulary=arm.vocabulary, exclude=arm.ablated,
        population=population,
    )  # fmt: skip


def polysemanticity(
    stats: Mapping[str, NeuronStats],
    concept: str,
    low: float | None = None,
    high: float | None = None,
    vocabulary: Mapping[int, str] | None = None,
    exclude: NeuronSet | None = None,
    population: Bool[Tensor, "layer neuron"] | None = None,
) -> Polysemanticity:
    """Count neurons whose share of concept-labelled top-k tokens is in ``[low, high]``; by
    default the :func:`mixing_band` of the concept's base rate at the first stage.

    Only neurons alive at every stage and outside ``exclude`` (pass the ablated set) are
    counted, at every stage: the same denominator throughout. ``population`` narrows that to
    given neurons (pass :func:`common_population` to compare arms on the same neurons).
    """
    if not stats:
        raise NeuroplasticError("no stages to count polysemantic neurons in")
    from_base_rate = low is None and high is None
    if low is None or high is None:
        band = mixing_band(concept_base_rate(next(iter(stats.values())), concept))
        low = band[0] if low is None else low
        high = band[1] if high is None else high
    if not 0 < low <= high < 1:
        raise NeuroplasticError(f"need 0 < low <= high < 1, got low={low}, high={high}")
    vocabulary = vocabulary or {}
    shares = {stage: concept_share(stage_stats, concept) for stage, stage_stats in stats.items()}
    outside = torch.ones_like(next(iter(shares.values())), dtype=torch.bool)
    if exclude is not None:
        outside &= ~exclude.mask()
    if population is not None:
        outside &= population
    population = outside.clone()
    for share in shares.values():
        population &= share.isfinite()
    n_population = int(population.sum())
    counts, rows = [], []
    first_poly: Tensor | None = None
    for stage, stage_stats in stats.items():
        share = shares[stage]
        poly = population & (share >= low) & (share <= high)
        if first_poly is None:
            first_poly = poly.clone()
        new = poly & ~first_poly
        label_counts = torch.nn.functional.one_hot(
            stage_stats.top_label, len(stage_stats.label_names)
        ).sum(-2)  # layer neuron label
        others = label_counts.double()
        others[..., stage_stats.label_index(concept)] = -1
        no_entity = stage_stats.label_names.index("O") if "O" in stage_stats.label_names else -1
        if no_entity >= 0:  # a tie between O and an entity type goes to the entity type
            others[..., no_entity] -= 0.5
        mixed_with = others.argmax(-1)  # other ties: the first label in the stats' order
        with_entity = poly & (mixed_with != no_entity)
        counts.append(
            {
                "stage": stage,
                "n_population": n_population,
                "n_alive": int((outside & share.isfinite()).sum()),
                "n_concept": int((population & (share >= high)).sum()),
                "n_polysemantic": int(poly.sum()),
                "n_new": int(new.sum()),
                "n_with_entity": int(with_entity.sum()),
                "polysemantic_share": int(poly.sum()) / n_population
                if n_population
                else float("nan"),
            }
        )
        where = poly.nonzero()
        for (layer, neuron), counts_row, token_row, share_value, is_new, mix in zip(
            where.tolist(),
            label_counts[where[:, 0], where[:, 1]].tolist(),
            stage_stats.top_token[where[:, 0], where[:, 1]].tolist(),
            share[where[:, 0], where[:, 1]].tolist(),
            new[where[:, 0], where[:, 1]].tolist(),
            mixed_with[where[:, 0], where[:, 1]].tolist(),
            strict=True,
        ):
            rows.append(
                {
                    "stage": stage,
                    "layer": layer,
                    "neuron": neuron,
                    "concept_share": share_value,
                    "labels": {
                        name: c
                        for name, c in zip(stage_stats.label_names, counts_row, strict=True)
                        if c
                    },
                    "mixed_with": stage_stats.label_names[mix],
                    "tokens": [vocabulary.get(t, f"#{t}") for t in token_row],
                    "new": is_new,
                }
            )
    columns = [
        "stage", "layer", "neuron", "concept_share", "labels", "mixed_with", "tokens", "new"
    ]  # fmt: skip
    return Polysemanticity(
        concept, low, high, population, pd.DataFrame(counts), pd.DataFrame(rows, columns=columns),
        from_base_rate,
    )  # fmt: skip


def polysemantic_gainers(
    arm: ArmRun, population: Bool[Tensor, "layer neuron"], top: int | float = 0.01
) -> dict[str, float | int]:
    """The paper's fourth claim, for one run's arm: are the neurons that gained the most
    saliency while retraining polysemantic (their top tokens blend the concept with other
    labels) more often than the neurons around them?

    Over ``population`` (pass :func:`control_pair_population`, so that an arm and its control
    are counted over the same neurons), narrowed to the neurons :func:`polysemanticity`
    counts, the top ``top`` (a share below 1, else a count) by saliency gain from the arm's
    start to its last stage (saliency re-ranked among those neurons; the truth half's rankings
    where the run kept them, :class:`~neuroplastic.analysis.arm_run.ProbeHalves`).
    ``gainers_share``: the share of them polysemantic at the last stage;
    ``population_share``: the share of all counted neurons; ``excess``: the difference, what
    being a top gainer adds."""
    poly = arm_polysemanticity(arm, population)
    counted = poly.population
    start, last = arm.start, arm.last
    if arm.halves is not None and {start, last} <= set(arm.halves.truth):
        first_ranking, last_ranking = arm.halves.truth[start], arm.halves.truth[last]
    else:
        first_ranking, last_ranking = arm.rankings()[start], arm.rankings()[last]
    counted = counted & first_ranking.alive & last_ranking.alive
    n = int(counted.sum())
    if n == 0:
        raise NeuroplasticError("no neuron is counted at every stage: no top gainers")
    gain = last_ranking.saliency_among(counted) - first_ranking.saliency_among(counted)
    k = min(n, max(1, round(top * n)) if top < 1 else int(top))
    order = torch.argsort(
        torch.where(counted, gain, -torch.inf).flatten(), descending=True, stable=True
    )
    gainers = torch.zeros(counted.numel(), dtype=torch.bool)
    gainers[order[:k]] = True
    gainers = gainers.view_as(counted)
    rows = poly.neurons[poly.neurons["stage"] == last]
    polysemantic = torch.zeros_like(counted)
    polysemantic[
        torch.tensor(rows["layer"].to_numpy(), dtype=torch.long),
        torch.tensor(rows["neuron"].to_numpy(), dtype=torch.long),
    ] = True
    polysemantic &= counted
    gainers_share = float((gainers & polysemantic).sum()) / k
    population_share = float(polysemantic.sum()) / n
    return {
        "n_gainers": k,
        "n_counted": n,
        "gainers_share": gainers_share,
        "population_share": population_share,
        "excess": gainers_share - population_share,
    }
