"""One arm of a run, in memory: its removed neurons and its stages in order (:class:`ArmRun`),
and the token helpers every analysis of it shares.

Every analysis in this package takes in-memory results (``Ranking``s, ``NeuronStats``, an
:class:`ArmRun`) so a notebook can use it without a run directory; :meth:`ArmRun.load` reads one
arm of a run directory.

A neuron is *dead* at a stage when it never fired (every activation exactly zero: an ablated
neuron in ``hold`` mode). It has no saliency (NaN, see :class:`~neuroplastic.core.ranking.Ranking`),
its "top tokens" are arbitrary ties, and every aggregate of this package leaves it out and says
how many neurons were alive.

One run is one sample: the statistics over the neurons of one model in this package are
*descriptions* (means, medians, counts, a rank correlation), not inference. No p-values or
confidence intervals are computed from neurons; intervals come from repeating the run over seeds
(``neuroplastic sweep``, :mod:`neuroplastic.analysis.intervals`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from neuroplastic.core.halves import ProbeSplit, split_probe
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking, alive_neurons
from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.rundir import RunDir, StageArtifacts

__all__ = ["ArmRun", "ProbeHalves", "concept_share", "concept_token_ids", "top_token_strings"]


@dataclass(frozen=True)
class ProbeHalves:
    """The probe sentences' two halves (:mod:`neuroplastic.core.halves`): which sentence is in
    which, and the arm's ranking on the truth half at its start and last stages. An analysis
    that reads one statistic (a neuron's top tokens) to explain another (its saliency gain)
    reads the first from the predict half and the second from the truth half, so the two do
    not share one sample's noise."""

    split: ProbeSplit
    #: stage name -> the ranking of the truth half's statistics at that stage
    truth: dict[str, Ranking]


@dataclass
class ArmRun:
    """Everything the analyses need about one arm: its ablated neurons and its stages in order."""

    arm: str
    concept: str
    ablated: NeuronSet
    stages: dict[str, StageArtifacts]
    #: token id -> token string, for every token in the stages' top-k tables.
    vocabulary: dict[int, str] = field(default_factory=dict)
    #: the probe halves, where the run kept them (None: a run made before they existed)
    halves: ProbeHalves | None = None

    @classmethod
    def load(cls, run: RunDir | str | Path, arm: str, round_: int = 1) -> ArmRun:
        """The arm's base and the stages of one round of a chase (``--rounds``; the only
        round otherwise), with the neurons held in that round."""
        from neuroplastic.store.rundir import stage_round

        run = run if isinstance(run, RunDir) else RunDir(run)
        names = [s for s in run.stages(arm) if stage_round(s) in (0, round_)]
        if not names:
            raise NeuroplasticError(f"{run.path}: arm {arm!r} has no stage artifacts yet")
        stages = {name: run.stage(arm, name) for name in names}
        vocabulary: dict[int, str] = {}
        for artifacts in stages.values():
            pairs = artifacts.top_tokens[["token_id", "token"]].drop_duplicates("token_id")
            vocabulary.update(zip(pairs["token_id"].astype(int), pairs["token"], strict=True))
        ablated = run.neurons(arm, round_)
        loaded = cls(arm, run.config()["concept"], ablated, stages, vocabulary)
        loaded.halves = _probe_halves(run, arm, (loaded.start, loaded.last))
        return loaded

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages)

    @property
    def first(self) -> str:
        return self.stage_names[0]

    @property
    def last(self) -> str:
        return self.stage_names[-1]

    @property
    def start(self) -> str:
        """The stage retraining starts from: ``pruned`` if present, else the first."""
        return "pruned" if "pruned" in self.stages else self.first

    def rankings(self) -> dict[str, Ranking]:
        return {name: artifacts.ranking for name, artifacts in self.stages.items()}

    def stats(self) -> dict[str, NeuronStats]:
        return {name: artifacts.stats for name, artifacts in self.stages.items()}

    def tokens(self, stage: str, layer: int, neuron: int) -> list[str]:
        """The neuron's top-k tokens at ``stage``, most activating first."""
        return top_token_strings(self.stages[stage].stats, self.vocabulary, layer, neuron)

    def _stage(self, name: str) -> StageArtifacts:
        if name not in self.stages:
            raise NeuroplasticError(
                f"arm {self.arm!r} has no stage {name!r}; stages: {', '.join(self.stages)}"
            )
        return self.stages[name]


def _probe_halves(run: RunDir, arm: str, stages: tuple[str, ...]) -> ProbeHalves | None:
    """The run's probe split (from data.json's probe sentence count and the seed, as the run
    drew it) and the truth half's ranking at ``stages``; None for a run without them."""
    if not run.data_path.is_file():
        return None
    try:
        n_probe = json.loads(run.data_path.read_text())["probe"]["sentences"]
    except (ValueError, KeyError, TypeError):
        return None
    config = run.config()
    truth = {}
    for stage in stages:
        halves = run.stage_halves(arm, stage)
        if halves is None:
            return None
        truth[stage] = Ranking.from_stats(halves["truth"], config["concept"], config["method"])
    return ProbeHalves(split_probe(n_probe, config["seed"]), truth)


def top_token_strings(
    stats: NeuronStats, vocabulary: Mapping[int, str], layer: int, neuron: int
) -> list[str]:
    return [vocabulary.get(t, f"#{t}") for t in stats.top_token[layer, neuron].tolist()]


def concept_share(stats: NeuronStats, concept: str) -> Float[Tensor, "layer neuron"]:
    """Fraction of each neuron's top-k tokens labelled ``concept`` (NaN for dead neurons)."""
    z = stats.label_index(concept)
    share = (stats.top_label == z).float().mean(-1)
    return torch.where(alive_neurons(stats), share, torch.full_like(share, float("nan")))


def concept_token_ids(stats: NeuronStats, concept: str) -> Int[Tensor, " n"]:
    """The distinct tokens labelled ``concept`` among all neurons' top-k tokens: the concept's
    own tokens, as far as the statistics kept them."""
    z = stats.label_index(concept)
    return stats.top_token[stats.top_label == z].unique()
