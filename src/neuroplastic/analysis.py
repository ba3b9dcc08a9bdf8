"""Where does a removed concept reappear? Analyses of one run, stage by stage.

Every function takes in-memory results (``Ranking``s, ``NeuronStats``, an :class:`ArmRun`) so a
notebook can use it without a run directory; :meth:`ArmRun.load` reads one arm of a run directory.
The questions, after Lo, Cohen & Barez (2024):

* :func:`relocation`, :func:`layer_saliency`, :func:`concept_depth` -- does the concept move to
  earlier layers? Mean saliency of the live neurons per layer, the share of the top-salient
  neurons in each layer and their saliency-weighted mean layer, per stage. Movement is measured
  on one fixed population (:func:`fixed_population`), apart from the shift that removing the
  top tier causes by itself at the pruned stage.
* :func:`reappearance` -- which surviving neurons took the concept over (largest saliency gain
  from the pruned stage to the last), with their top tokens before and after.
* :func:`pruned_trace` -- do the pruned neurons come back (``regrow`` mode), and with the same
  meaning? Their saliency and the similarity of their top tokens to their original ones.
* :func:`primed_neurons` -- does a neuron's similarity to the concept before pruning go with
  how much saliency it gains? Spearman's rho over the neurons.
* :func:`polysemanticity` -- neurons whose top tokens blend the concept with other labels.
* :func:`recovery_curves`, :func:`stage_gaps` -- F1 (or LM loss) per entity type over
  training, both arms, and each stage's gap to base and to the control arm.

A neuron is *dead* at a stage when it never fired (every activation exactly zero: an ablated
neuron in ``hold`` mode). It has no saliency (NaN, see :class:`~neuroplastic.ranking.Ranking`),
its "top tokens" are arbitrary ties, and every aggregate here leaves it out and says how many
neurons were alive. Per-stage shares (polysemanticity) are taken over one fixed population, the
neurons alive at every stage and outside the ablated set, so a change of denominator cannot pass
for a change of behaviour.

One run is one sample: the statistics over the neurons of one model below are *descriptions*
(means, medians, counts, a rank correlation), not inference. No p-values or confidence
intervals are computed from neurons; intervals come from repeating the run over seeds
(``neuroplastic sweep``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from scipy import stats as scipy_stats
from torch import Tensor

from neuroplastic.errors import NeuroplasticError
from neuroplastic.neurons import NeuronSet
from neuroplastic.ranking import Ranking, alive_neurons
from neuroplastic.rundir import RunDir, StageArtifacts
from neuroplastic.similarity import TokenEmbeddings
from neuroplastic.stats import NeuronStats

__all__ = [
    "ArmAnalysis",
    "ArmRun",
    "Polysemanticity",
    "PrimedNeurons",
    "PrunedTrace",
    "Relocation",
    "analyse_arm",
    "common_population",
    "concept_base_rate",
    "concept_depth",
    "concept_share",
    "concept_token_ids",
    "fixed_population",
    "layer_saliency",
    "mixing_band",
    "polysemanticity",
    "primed_neurons",
    "pruned_trace",
    "reappearance",
    "recovery_curves",
    "relocation",
    "stage_gaps",
    "top_token_strings",
]


# ---------------------------------------------------------------------------------------------
# One arm of a run, in memory
# ---------------------------------------------------------------------------------------------


@dataclass
class ArmRun:
    """Everything the analyses need about one arm: its ablated neurons and its stages in order."""

    arm: str
    concept: str
    ablated: NeuronSet
    stages: dict[str, StageArtifacts]
    #: token id -> token string, for every token in the stages' top-k tables.
    vocabulary: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, run: RunDir | str | Path, arm: str, round_: int = 1) -> ArmRun:
        """The arm's base and the stages of one round of a chase (``--rounds``; the only
        round otherwise), with the neurons held in that round."""
        from neuroplastic.rundir import stage_round

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
        return cls(arm, run.config()["concept"], ablated, stages, vocabulary)

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


# ---------------------------------------------------------------------------------------------
# (1) Saliency per layer, and the depth of the concept
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# (2) Where the concept reappears
# ---------------------------------------------------------------------------------------------


def reappearance(
    arm: ArmRun,
    n: int = 20,
    start: str | None = None,
    end: str | None = None,
    embeddings: TokenEmbeddings | None = None,
) -> pd.DataFrame:
    """The ``n`` neurons outside the ablated set that gained most saliency from ``start``
    (default ``pruned``) to ``end`` (default the last stage); neurons dead at either stage have
    no saliency and are left out.

    Columns: layer, neuron, saliency_base, saliency_start, saliency_end, gain, rank_end,
    concept_share_base, concept_share_end, tokens_base, tokens_end (top tokens at the first and
    the ``end`` stage) and similarity (of those two token sets; NaN without ``embeddings``).
    """
    start, end = start or arm.start, end or arm.last
    first, before, after = arm._stage(arm.first), arm._stage(start), arm._stage(end)
    gain = after.ranking.saliency - before.ranking.saliency
    candidate = gain.isfinite() & ~arm.ablated.mask()
    order = torch.argsort(-gain.masked_fill(~candidate, float("-inf")).flatten(), stable=True)
    chosen = order[: min(n, int(candidate.sum()))]
    n = len(chosen)
    layers, neurons = chosen // gain.shape[1], chosen % gain.shape[1]
    share_base = concept_share(first.stats, arm.concept)
    share_end = concept_share(after.stats, arm.concept)
    similarity = (
        embeddings.similarity_many(
            first.stats.top_token[layers, neurons], after.stats.top_token[layers, neurons]
        ).numpy()
        if embeddings is not None and n
        else np.full(n, np.nan)
    )
    rank_end = after.ranking.global_rank
    return pd.DataFrame(
        {
            "layer": layers.numpy(),
            "neuron": neurons.numpy(),
            "saliency_base": first.ranking.saliency[layers, neurons].numpy(),
            "saliency_start": before.ranking.saliency[layers, neurons].numpy(),
            "saliency_end": after.ranking.saliency[layers, neurons].numpy(),
            "gain": gain[layers, neurons].numpy(),
            "rank_end": rank_end[layers, neurons].numpy(),
            "concept_share_base": share_base[layers, neurons].numpy(),
            "concept_share_end": share_end[layers, neurons].numpy(),
            "tokens_base": [
                arm.tokens(arm.first, int(a), int(b)) for a, b in zip(layers, neurons, strict=True)
            ],
            "tokens_end": [
                arm.tokens(end, int(a), int(b)) for a, b in zip(layers, neurons, strict=True)
            ],
            "similarity": similarity,
        }
    )


# ---------------------------------------------------------------------------------------------
# (3) The pruned neurons themselves
# ---------------------------------------------------------------------------------------------


@dataclass
class PrunedTrace:
    """The ablated neurons at every stage (meaningful in ``regrow`` mode; dead in ``hold``)."""

    #: stage, layer, neuron, saliency (NaN when dead), alive, concept_share, similarity (to
    #: base top tokens)
    neurons: pd.DataFrame
    #: stage, n, n_alive, saliency_mean, saliency_median, similarity_mean, similarity_median,
    #: concept_share_mean: over the ablated neurons alive at that stage (NaN when none is)
    stages: pd.DataFrame


def pruned_trace(
    arm: ArmRun, embeddings: TokenEmbeddings | None = None, reference: str | None = None
) -> PrunedTrace:
    """Saliency of the ablated neurons and the similarity of their top tokens to their own top
    tokens at ``reference`` (default the first stage, before pruning), stage by stage."""
    reference = reference or arm.first
    pairs = torch.tensor(arm.ablated.neurons, dtype=torch.long).reshape(-1, 2)
    layers, neurons = pairs[:, 0], pairs[:, 1]
    original = arm._stage(reference).stats.top_token[layers, neurons]
    per_neuron, per_stage = [], []
    for stage, artifacts in arm.stages.items():
        alive = alive_neurons(artifacts.stats)[layers, neurons].numpy()
        saliency = artifacts.ranking.saliency[layers, neurons].double().numpy()
        share = concept_share(artifacts.stats, arm.concept)[layers, neurons].numpy()
        if embeddings is not None and len(pairs):
            similarity = embeddings.similarity_many(
                artifacts.stats.top_token[layers, neurons], original
            ).numpy()
            similarity = np.where(alive, similarity, np.nan)
        else:
            similarity = np.full(len(pairs), np.nan)
        per_neuron.append(
            pd.DataFrame(
                {
                    "stage": stage,
                    "layer": layers.numpy(),
                    "neuron": neurons.numpy(),
                    "saliency": saliency,
                    "alive": alive,
                    "concept_share": share,
                    "similarity": similarity,
                }
            )
        )
        per_stage.append(
            {
                "stage": stage,
                "n": len(pairs),
                "n_alive": int(alive.sum()),
                "saliency_mean": _finite_mean(saliency),
                "saliency_median": _finite_median(saliency),
                "similarity_mean": _finite_mean(similarity),
                "similarity_median": _finite_median(similarity),
                "concept_share_mean": _finite_mean(share),
            }
        )
    return PrunedTrace(pd.concat(per_neuron, ignore_index=True), pd.DataFrame(per_stage))


def _finite_mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def _finite_median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


# ---------------------------------------------------------------------------------------------
# (4) Primed neurons
# ---------------------------------------------------------------------------------------------


@dataclass
class PrimedNeurons:
    """Spearman's rho between a neuron's pre-pruning similarity to the concept and its saliency
    gain during retraining, over the ``n`` neurons outside the ablated set that are alive at
    every stage it compares. A description of one run: its uncertainty comes from seeds."""

    rho: float
    n: int
    start: str
    end: str
    #: layer, neuron, similarity (base top tokens vs the concept's tokens), gain,
    #: saliency_start, saliency_end
    neurons: pd.DataFrame
    #: Spearman rho of similarity with saliency at ``start``: the part of ``rho`` that is
    #: mechanical (gain = end - start, so whatever goes with start goes against gain)
    rho_with_start: float = float("nan")
    #: partial Spearman rho of similarity with saliency at ``end``, given saliency at
    #: ``start``: priming with the mechanical part taken out
    partial_rho: float = float("nan")


def primed_neurons(
    arm: ArmRun,
    embeddings: TokenEmbeddings,
    start: str | None = None,
    end: str | None = None,
    concept_tokens: Sequence[int] | None = None,
    start_saliency_below: float | None = None,
) -> PrimedNeurons:
    """Does similarity to the concept before pruning go with the saliency gain from ``start``
    (default ``pruned``) to ``end`` (default last)? A positive rho says the concept came back
    in neurons that were already near it ("primed"), as Lo et al. report.

    ``concept_tokens`` defaults to :func:`concept_token_ids` of the first stage. Neurons dead at
    the first stage, at ``start`` or at ``end``, and those whose top tokens have no embedding,
    are left out. ``start_saliency_below`` keeps only neurons with room to gain.
    """
    start, end = start or arm.start, end or arm.last
    base = arm._stage(arm.first)
    if concept_tokens is None:
        concept_tokens = concept_token_ids(base.stats, arm.concept).tolist()
    if len(concept_tokens) == 0:
        raise NeuroplasticError(
            f"no token labelled {arm.concept!r} among the top tokens of stage {arm.first!r}: "
            "cannot measure similarity to the concept"
        )
    n_layers, d_mlp = base.stats.n_layers, base.stats.d_mlp
    similarity = embeddings.similarity_many(
        base.stats.top_token.reshape(n_layers * d_mlp, -1), torch.tensor(list(concept_tokens))
    ).reshape(n_layers, d_mlp)
    start_saliency = arm._stage(start).ranking.saliency
    gain = arm._stage(end).ranking.saliency - start_saliency
    keep = ~arm.ablated.mask() & alive_neurons(base.stats) & similarity.isfinite() & gain.isfinite()
    if start_saliency_below is not None:
        # Neurons already salient at the start cannot gain much (the saliency ceiling), which
        # biases the correlation down; this asks the question among those with room to gain.
        keep &= start_saliency < start_saliency_below
    layer, neuron = keep.nonzero(as_tuple=True)
    x, y = similarity[keep].double().numpy(), gain[keep].double().numpy()
    before = start_saliency[keep].double().numpy()
    frame = pd.DataFrame(
        {
            "layer": layer.numpy(),
            "neuron": neuron.numpy(),
            "similarity": x,
            "gain": y,
            "saliency_start": before,
            "saliency_end": before + y,
        }
    )
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:  # rank correlation undefined
        return PrimedNeurons(float("nan"), len(x), start, end, frame)
    rho = scipy_stats.spearmanr(x, y).statistic
    return PrimedNeurons(
        float(rho),
        len(x),
        start,
        end,
        frame,
        rho_with_start=_spearman(x, before),
        partial_rho=partial_spearman(x, before + y, before),
    )


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy_stats.spearmanr(x, y).statistic)


def partial_spearman(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Spearman's rho of ``x`` with ``y`` with ``given`` partialled out: the correlation of
    their ranks after each is regressed on the ranks of ``given`` (ties share their average
    rank). NaN when a rank correlation is undefined or ``given`` explains x or y entirely."""
    rx, ry, rz = (scipy_stats.rankdata(v) for v in (x, y, given))
    r_xy, r_xz, r_yz = _pearson(rx, ry), _pearson(rx, rz), _pearson(ry, rz)
    denominator = math.sqrt(max(0.0, (1 - r_xz**2) * (1 - r_yz**2)))
    if not np.isfinite([r_xy, r_xz, r_yz]).all() or denominator < 1e-12:
        return float("nan")
    return float((r_xy - r_xz * r_yz) / denominator)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------
# (5) Polysemanticity
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# (6) Recovery curves
# ---------------------------------------------------------------------------------------------


def recovery_curves(metrics: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """``metric`` per entity type against training step, one row per (evaluation, type).

    ``metrics`` is ``RunDir.metrics()`` (``f1`` flattened to ``f1_overall``, ``f1_LOC``...;
    ``metric="lm_loss"`` for the language-modelling task, ``lm_loss_concept`` and
    ``lm_loss_other``). Steps are monotone within an arm: base fine-tuning evaluations have
    negative steps, retraining steps count from 0 at pruning. Evaluations inside a stage are
    named ``retrain-1@10`` and belong to ``retrain-1``. Columns: arm, stage, step, entity,
    value (and ``metric`` as a copy of value), in order of arm and step.
    """
    columns = ["arm", "stage", "step", "entity", "value", metric]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    value_columns = [c for c in metrics.columns if c.startswith(f"{metric}_")]
    if not value_columns or not {"arm", "stage", "step"} <= set(metrics.columns):
        raise NeuroplasticError(
            f"metrics need arm, stage, step and {metric} columns; got " + ", ".join(metrics.columns)
        )
    from neuroplastic.rundir import stage_key

    frame = metrics.copy()
    # Pruning takes no step: at equal steps the stage order decides (base before pruned).
    frame["_order"] = frame["stage"].map(lambda s: stage_key(str(s)))
    frame = frame.sort_values(["arm", "step", "_order"], kind="stable")
    long = frame.melt(
        id_vars=["arm", "stage", "step"],
        value_vars=value_columns,
        var_name="entity",
        value_name="value",
    )
    long["entity"] = long["entity"].str.removeprefix(f"{metric}_")
    long[metric] = long["value"]
    return long.dropna(subset=["value"]).reset_index(drop=True)[columns]


def _metric_of(entries: Sequence[Mapping[str, Any]]) -> str:
    return "lm_loss" if entries and not any("f1" in e for e in entries) else "f1"


def stage_gaps(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Every stage's score and its gaps, as the experiment recorded them in ``summary.json``:
    ``gap_to_base`` (score - the base score, every arm) and ``gap_to_control`` (concept arm
    score - random arm score at the same stage: the paired control).

    One row per (arm, stage, entity); columns arm, stage, step, entity, value, gap_to_base,
    gap_to_control (NaN where not recorded). ``attrs["metric"]`` is ``f1`` or ``lm_loss``.
    """
    entries = [
        (arm, entry)
        for arm, data in summary.get("arms", {}).items()
        for entry in data.get("stages", [])
    ]
    metric = _metric_of([e for _, e in entries])
    rows = []
    for arm, entry in entries:
        to_base, to_control = entry.get("gap_to_base", {}), entry.get("gap_to_control", {})
        for entity, value in entry.get(metric, {}).items():
            rows.append(
                {
                    "arm": arm,
                    "stage": entry.get("stage"),
                    "step": entry.get("step"),
                    "entity": str(entity),
                    "value": value,
                    "gap_to_base": to_base.get(entity, np.nan),
                    "gap_to_control": to_control.get(entity, np.nan),
                }
            )
    columns = ["arm", "stage", "step", "entity", "value", "gap_to_base", "gap_to_control"]
    frame = pd.DataFrame(rows, columns=columns)
    frame[["value", "gap_to_base", "gap_to_control"]] = frame[
        ["value", "gap_to_base", "gap_to_control"]
    ].astype(float)
    frame.attrs["metric"] = metric
    return frame


# ---------------------------------------------------------------------------------------------
# Everything for one arm
# ---------------------------------------------------------------------------------------------


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
) -> ArmAnalysis:
    """Run every analysis on one arm (similarities need ``embeddings``; without them the
    primed-neuron correlation is skipped and similarity columns are NaN). ``population``: the
    neurons polysemanticity is counted over (:func:`common_population` of the run's arms, so
    that the arms' counts compare); by default the arm's own fixed population."""
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
        primed=primed_neurons(arm, embeddings) if can_prime else None,
        primed_unsalient=(
            primed_neurons(arm, embeddings, start_saliency_below=0.5) if can_prime else None
        ),
        polysemanticity=polysemanticity(
            arm.stats(),
            arm.concept,
            vocabulary=arm.vocabulary,
            exclude=arm.ablated,
            population=population,
        ),
    )
