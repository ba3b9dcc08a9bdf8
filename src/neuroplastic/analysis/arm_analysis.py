"""Every analysis of one arm at once (:func:`analyse_arm`): what the run's report shows."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from jaxtyping import Bool
from torch import Tensor

from neuroplastic.analysis.arm_run import ArmRun, concept_token_ids
from neuroplastic.analysis.layers import Relocation, layer_saliency, relocation
from neuroplastic.analysis.polysemantic import Polysemanticity, arm_polysemanticity
from neuroplastic.analysis.reappearance import (
    PrimedNeurons,
    PrunedTrace,
    primed_neurons,
    pruned_trace,
    reappearance,
)
from neuroplastic.core.similarity import TokenEmbeddings

__all__ = ["ArmAnalysis", "analyse_arm"]


@dataclass
class ArmAnalysis:
    """All analyses of one arm (what the report shows)."""

    run: ArmRun
    #: top_share over the fixed population (alive at every stage, outside the removed set)
    layer_saliency: pd.DataFrame
    #: per stage, the mean layer of the stage's own top set and of the fixed population's
    depth: pd.DataFrame
    relocation: Relocation
    reappearance: pd.DataFrame
    pruned: PrunedTrace
    primed: PrimedNeurons | None
    #: the same among neurons with saliency < 0.5 at the start (room to gain)
    primed_unsalient: PrimedNeurons | None
    polysemanticity: Polysemanticity


def analyse_arm(
    arm: ArmRun,
    embeddings: TokenEmbeddings | None = None,
    top: int | float = 0.01,
    n_reappeared: int = 20,
    population: Bool[Tensor, "layer neuron"] | None = None,
    primed_population: Bool[Tensor, "layer neuron"] | None = None,
) -> ArmAnalysis:
    """Run every analysis on one arm (similarities need ``embeddings``; without them the
    primed-neuron correlation is skipped and similarity columns are NaN). ``population``: the
    neurons polysemanticity is counted over (:func:`common_population` of the run's arms, so
    that the arms' counts compare); ``primed_population``: those primed neurons are correlated
    over (:func:`control_pair_population`, as the sweep does); by default the arm's own."""
    rankings = arm.rankings()
    moved = relocation(rankings, arm.ablated, top, arm.start)
    can_prime = (
        embeddings is not None
        and concept_token_ids(arm.stages[arm.first].stats, arm.concept).numel() > 0
    )
    return ArmAnalysis(
        run=arm,
        layer_saliency=layer_saliency(rankings, top, moved.population),
        depth=moved.depth,
        relocation=moved,
        reappearance=reappearance(arm, n=n_reappeared, embeddings=embeddings),
        pruned=pruned_trace(arm, embeddings),
        primed=(
            primed_neurons(arm, embeddings, population=primed_population) if can_prime else None
        ),
        primed_unsalient=(
            primed_neurons(arm, embeddings, start_saliency_below=0.5, population=primed_population)
            if can_prime
            else None
        ),
        polysemanticity=arm_polysemanticity(arm, population),
    )
