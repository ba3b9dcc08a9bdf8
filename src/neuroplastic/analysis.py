"""Where does a removed concept reappear? Analyses of one run, stage by stage.

Every function takes in-memory results (``Ranking``s, ``NeuronStats``, an :class:`ArmRun`) so a
notebook can use it without a run directory; :meth:`ArmRun.load` reads one arm of a run directory.
The questions, after Lo, Cohen & Barez (2024):

* :func:`layer_saliency`, :func:`concept_depth` -- does the concept move to earlier layers? Mean
  saliency per layer (with a 95% interval), the share of the top-salient neurons in each layer,
  and the saliency-weighted mean layer of the top neurons, per stage.
* :func:`reappearance` -- which surviving neurons took the concept over (largest saliency gain
  from the pruned stage to the last), with their top tokens before and after.
* :func:`pruned_trace` -- do the pruned neurons come back (``regrow`` mode), and with the same
  meaning? Their saliency and the similarity of their top tokens to their original ones.
* :func:`primed_neurons` -- does a neuron's similarity to the concept before pruning predict how
  much saliency it gains? Spearman correlation with a bootstrap interval.
* :func:`polysemanticity` -- neurons whose top tokens blend the concept with other labels.
* :func:`recovery_curves`, :func:`stage_scores` -- F1 per entity type over training, both arms.

A neuron is *dead* at a stage when all its stored top-k activations are exactly zero (an ablated
neuron in ``hold`` mode): its "top tokens" are then arbitrary ties, so its similarity and label
shares are left out (NaN / not counted).
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
from neuroplastic.ranking import Ranking
from neuroplastic.rundir import RunDir, StageArtifacts
from neuroplastic.similarity import TokenEmbeddings
from neuroplastic.stats import NeuronStats

__all__ = [
    "ArmAnalysis",
    "ArmRun",
    "Polysemanticity",
    "PrimedNeurons",
    "PrunedTrace",
    "alive_mask",
    "analyse_arm",
    "concept_depth",
    "concept_share",
    "concept_token_ids",
    "layer_saliency",
    "polysemanticity",
    "primed_neurons",
    "pruned_trace",
    "reappearance",
    "recovery_curves",
    "stage_scores",
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
    def load(cls, run: RunDir | str | Path, arm: str) -> ArmRun:
        run = run if isinstance(run, RunDir) else RunDir(run)
        names = run.stages(arm)
        if not names:
            raise NeuroplasticError(f"{run.path}: arm {arm!r} has no stage artifacts yet")
        stages = {name: run.stage(arm, name) for name in names}
        vocabulary: dict[int, str] = {}
        for artifacts in stages.values():
            pairs = artifacts.top_tokens[["token_id", "token"]].drop_duplicates("token_id")
            vocabulary.update(zip(pairs["token_id"].astype(int), pairs["token"], strict=True))
        return cls(arm, run.config()["concept"], run.neurons(arm), stages, vocabulary)

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


def alive_mask(stats: NeuronStats) -> Bool[Tensor, "layer neuron"]:
    """False where a neuron's stored top-k activations are all exactly zero (ablated, dead)."""
    if stats.k == 0:
        return torch.zeros(stats.n_layers, stats.d_mlp, dtype=torch.bool)
    return stats.top_values.abs().amax(-1) > 0


def concept_share(stats: NeuronStats, concept: str) -> Float[Tensor, "layer neuron"]:
    """Fraction of each neuron's top-k tokens labelled ``concept`` (NaN for dead neurons)."""
    z = stats.label_index(concept)
    share = (stats.top_label == z).float().mean(-1)
    return torch.where(alive_mask(stats), share, torch.full_like(share, float("nan")))


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


def layer_saliency(rankings: Mapping[str, Ranking], top: int | float = 0.01) -> pd.DataFrame:
    """Per stage and layer: mean saliency with a 95% t-interval, and the top neurons' layers.

    ``top`` (a count, or a fraction of all neurons) picks the most salient neurons of each stage;
    ``top_share`` is the fraction of them in the layer. Columns: stage, layer, n, mean, ci_low,
    ci_high, top_count, top_share.
    """
    rows = []
    for stage, ranking in rankings.items():
        saliency = ranking.saliency.double()
        n_top = _n_top(top, saliency.numel())
        in_top = ranking.global_rank < n_top
        n = ranking.d_mlp
        half = scipy_stats.t.ppf(0.975, n - 1) if n > 1 else float("nan")
        for layer in range(ranking.n_layers):
            values = saliency[layer]
            mean = float(values.mean())
            sem = float(values.std()) / math.sqrt(n) if n > 1 else float("nan")
            count = int(in_top[layer].sum())
            rows.append(
                {
                    "stage": stage,
                    "layer": layer,
                    "n": n,
                    "mean": mean,
                    "ci_low": mean - half * sem,
                    "ci_high": mean + half * sem,
                    "top_count": count,
                    "top_share": count / n_top,
                }
            )
    return pd.DataFrame(rows)


def concept_depth(
    rankings: Mapping[str, Ranking], top: int | float = 0.01, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The saliency-weighted mean layer of the ``top`` neurons per stage, with a bootstrap 95%
    interval (resampling those neurons). A falling value means the concept moved to earlier layers.

    Weights are the saliency *within the top set* (1 for the first, falling linearly to 1/n_top):
    the global saliency of a top-1% neuron is 0.99-1.0, which would make every weight the same.

    Columns: stage, n_top, mean_layer, ci_low, ci_high.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for stage, ranking in rankings.items():
        n_top = _n_top(top, ranking.scores.numel())
        order = ranking.order()[:n_top]
        layers = (order // ranking.d_mlp).double().numpy()
        weights = 1 - np.arange(n_top, dtype=np.float64) / n_top
        mean = _weighted_mean(layers, weights)
        index = rng.integers(0, n_top, size=(n_boot, n_top))
        boot = np.array([_weighted_mean(layers[i], weights[i]) for i in index])
        low, high = np.nanpercentile(boot, [2.5, 97.5]) if n_boot else (np.nan, np.nan)
        rows.append(
            {
                "stage": stage,
                "n_top": n_top,
                "mean_layer": mean,
                "ci_low": float(low),
                "ci_high": float(high),
            }
        )
    return pd.DataFrame(rows)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float((values * weights).sum() / total) if total > 0 else float(values.mean())


def _mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the finite values (NaN when there are none)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


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
    (default ``pruned``) to ``end`` (default the last stage).

    Columns: layer, neuron, saliency_base, saliency_start, saliency_end, gain, rank_end,
    concept_share_base, concept_share_end, tokens_base, tokens_end (top tokens at the first and
    the ``end`` stage) and similarity (of those two token sets; NaN without ``embeddings``).
    """
    start, end = start or arm.start, end or arm.last
    first, before, after = arm._stage(arm.first), arm._stage(start), arm._stage(end)
    gain = after.ranking.saliency - before.ranking.saliency
    gain[arm.ablated.mask()] = float("-inf")
    order = torch.argsort(-gain.flatten(), stable=True)
    n = min(n, len(order) - len(arm.ablated))
    chosen = order[:n]
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

    #: stage, layer, neuron, saliency, alive, concept_share, similarity (to base top tokens)
    neurons: pd.DataFrame
    #: stage, n, n_alive, saliency_mean/_ci_low/_ci_high, similarity_mean/_ci_low/_ci_high,
    #: concept_share_mean
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
        alive = alive_mask(artifacts.stats)[layers, neurons]
        saliency = artifacts.ranking.saliency[layers, neurons].double().numpy()
        share = concept_share(artifacts.stats, arm.concept)[layers, neurons].numpy()
        if embeddings is not None and len(pairs):
            similarity = embeddings.similarity_many(
                artifacts.stats.top_token[layers, neurons], original
            ).numpy()
            similarity = np.where(alive.numpy(), similarity, np.nan)
        else:
            similarity = np.full(len(pairs), np.nan)
        per_neuron.append(
            pd.DataFrame(
                {
                    "stage": stage,
                    "layer": layers.numpy(),
                    "neuron": neurons.numpy(),
                    "saliency": saliency,
                    "alive": alive.numpy(),
                    "concept_share": share,
                    "similarity": similarity,
                }
            )
        )
        s_mean, s_low, s_high = _mean_ci(saliency)
        m_mean, m_low, m_high = _mean_ci(similarity)
        per_stage.append(
            {
                "stage": stage,
                "n": len(pairs),
                "n_alive": int(alive.sum()),
                "saliency_mean": s_mean,
                "saliency_ci_low": s_low,
                "saliency_ci_high": s_high,
                "similarity_mean": m_mean,
                "similarity_ci_low": m_low,
                "similarity_ci_high": m_high,
                "concept_share_mean": float(np.nanmean(share))
                if np.isfinite(share).any()
                else float("nan"),
            }
        )
    return PrunedTrace(pd.concat(per_neuron, ignore_index=True), pd.DataFrame(per_stage))


# ---------------------------------------------------------------------------------------------
# (4) Primed neurons
# ---------------------------------------------------------------------------------------------


@dataclass
class PrimedNeurons:
    """Spearman correlation between a neuron's pre-pruning similarity to the concept and its
    saliency gain during retraining, over the neurons outside the ablated set."""

    rho: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    start: str
    end: str
    #: layer, neuron, similarity (base top tokens vs the concept's tokens), gain
    neurons: pd.DataFrame


def primed_neurons(
    arm: ArmRun,
    embeddings: TokenEmbeddings,
    start: str | None = None,
    end: str | None = None,
    concept_tokens: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    start_saliency_below: float | None = None,
) -> PrimedNeurons:
    """Does similarity to the concept before pruning predict the saliency gain from ``start``
    (default ``pruned``) to ``end`` (default last)? A positive rho says the concept came back in
    neurons that were already near it ("primed"), as Lo et al. report.

    ``concept_tokens`` defaults to :func:`concept_token_ids` of the first stage. Neurons dead at
    the first stage or whose top tokens have no embedding are left out. The interval is the
    percentile bootstrap over neurons.
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
    gain = arm._stage(end).ranking.saliency - arm._stage(start).ranking.saliency
    keep = ~arm.ablated.mask() & alive_mask(base.stats) & similarity.isfinite()
    if start_saliency_below is not None:
        # Neurons already salient at the start cannot gain much (the saliency ceiling), which
        # biases the correlation down; this asks the question among those with room to gain.
        keep &= arm._stage(start).ranking.saliency < start_saliency_below
    layer, neuron = keep.nonzero(as_tuple=True)
    x, y = similarity[keep].double().numpy(), gain[keep].double().numpy()
    frame = pd.DataFrame(
        {"layer": layer.numpy(), "neuron": neuron.numpy(), "similarity": x, "gain": y}
    )
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:  # rank correlation undefined
        return PrimedNeurons(
            float("nan"), float("nan"), float("nan"), float("nan"), len(x), start, end, frame
        )
    result = scipy_stats.spearmanr(x, y)
    low, high = _bootstrap_spearman(x, y, n_boot, seed, confidence)
    return PrimedNeurons(
        float(result.statistic), low, high, float(result.pvalue), len(x), start, end, frame
    )


def _bootstrap_spearman(
    x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile interval of Spearman's rho, resampling pairs; vectorised in chunks."""
    if n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n, rhos = len(x), []
    chunk = max(1, 2_000_000 // n)
    for begin in range(0, n_boot, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_boot - begin), n))
        rx = scipy_stats.rankdata(x[index], axis=1)
        ry = scipy_stats.rankdata(y[index], axis=1)
        rx -= rx.mean(1, keepdims=True)
        ry -= ry.mean(1, keepdims=True)
        denominator = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            rhos.append((rx * ry).sum(1) / denominator)
    alpha = (1 - confidence) / 2
    rhos_all = np.concatenate(rhos)
    if not np.isfinite(rhos_all).any():
        return float("nan"), float("nan")
    low, high = np.nanquantile(rhos_all, [alpha, 1 - alpha])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# (5) Polysemanticity
# ---------------------------------------------------------------------------------------------


@dataclass
class Polysemanticity:
    """Neurons whose top-k tokens mix the concept with other labels, stage by stage."""

    concept: str
    low: float
    high: float
    #: stage, n_alive, n_concept (share >= high), n_polysemantic, n_new (not polysemantic at
    #: the first stage), polysemantic_share (of alive neurons)
    counts: pd.DataFrame
    #: stage, layer, neuron, concept_share, labels ({label: count}), tokens, new
    neurons: pd.DataFrame

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


def polysemanticity(
    stats: Mapping[str, NeuronStats],
    concept: str,
    low: float = 0.2,
    high: float = 0.8,
    vocabulary: Mapping[int, str] | None = None,
    exclude: NeuronSet | None = None,
) -> Polysemanticity:
    """Count neurons whose share of concept-labelled top-k tokens is in ``[low, high]``.

    Dead neurons are not counted; ``exclude`` (e.g. the ablated set) leaves neurons out too.
    """
    if not 0 < low <= high < 1:
        raise NeuroplasticError(f"need 0 < low <= high < 1, got low={low}, high={high}")
    vocabulary = vocabulary or {}
    counts, rows = [], []
    first_mask: Tensor | None = None
    for stage, stage_stats in stats.items():
        share = concept_share(stage_stats, concept)
        alive = share.isfinite()
        if exclude is not None:
            alive &= ~exclude.mask()
        poly = alive & (share >= low) & (share <= high)
        if first_mask is None:
            first_mask = poly.clone()
        new = poly & ~first_mask
        counts.append(
            {
                "stage": stage,
                "n_alive": int(alive.sum()),
                "n_concept": int((alive & (share >= high)).sum()),
                "n_polysemantic": int(poly.sum()),
                "n_new": int(new.sum()),
                "polysemantic_share": float(poly.sum() / alive.sum())
                if alive.any()
                else float("nan"),
            }
        )
        label_counts = torch.nn.functional.one_hot(
            stage_stats.top_label, len(stage_stats.label_names)
        ).sum(-2)  # layer neuron label
        where = poly.nonzero()
        for (layer, neuron), counts_row, token_row, share_value, is_new in zip(
            where.tolist(),
            label_counts[where[:, 0], where[:, 1]].tolist(),
            stage_stats.top_token[where[:, 0], where[:, 1]].tolist(),
            share[where[:, 0], where[:, 1]].tolist(),
            new[where[:, 0], where[:, 1]].tolist(),
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
                    "tokens": [vocabulary.get(t, f"#{t}") for t in token_row],
                    "new": is_new,
                }
            )
    columns = ["stage", "layer", "neuron", "concept_share", "labels", "tokens", "new"]
    return Polysemanticity(
        concept, low, high, pd.DataFrame(counts), pd.DataFrame(rows, columns=columns)
    )


# ---------------------------------------------------------------------------------------------
# (6) Recovery curves
# ---------------------------------------------------------------------------------------------


def recovery_curves(
    metrics: pd.DataFrame, metric: str = "f1", stage_order: Sequence[str] | None = None
) -> pd.DataFrame:
    """``metric`` per entity type against training step, one row per (evaluation, type).

    ``metrics`` is ``RunDir.metrics()`` (``f1`` flattened to ``f1_overall``, ``f1_LOC``...;
    ``metric="lm_loss"`` for the language-modelling task). Evaluations inside a stage are named
    ``retrain-1@10`` and belong to ``retrain-1``. ``training_step`` is ``step`` made monotone
    within each arm: if a stage's steps restart below the previous stage's, they are taken as
    counted from that stage's start and continue from the previous stage's last step (so curves
    read the same whether the experiment counts steps per stage or per arm). Columns: arm,
    stage, step, training_step, entity, value (and ``metric`` as a copy of value).
    """
    columns = ["arm", "stage", "step", "training_step", "entity", "value", metric]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    frame = metrics.copy()
    if metric in frame.columns and f"{metric}_overall" not in frame.columns:
        frame = frame.rename(columns={metric: f"{metric}_overall"})
    value_columns = [c for c in frame.columns if c.startswith(f"{metric}_")]
    if not value_columns or not {"arm", "stage", "step"} <= set(frame.columns):
        raise NeuroplasticError(
            f"metrics need arm, stage, step and {metric} columns; got " + ", ".join(frame.columns)
        )
    from neuroplastic.rundir import stage_names

    order = {name: i for i, name in enumerate(stage_order or stage_names(1000))}
    frame["_order"] = frame["stage"].map(lambda s: order.get(str(s).partition("@")[0], len(order)))
    frame = frame.sort_values(["arm", "_order", "step"], kind="stable")
    frame["training_step"] = frame["step"].astype(float)
    for _, group in frame.groupby("arm", sort=False):
        offset, running_max = 0.0, -math.inf
        for _, stage_rows in group.groupby("_order", sort=True):
            steps = stage_rows["step"].astype(float)
            if steps.min() + offset < running_max:  # counted from 0 again in this stage
                offset = running_max
            frame.loc[stage_rows.index, "training_step"] = steps + offset
            running_max = max(running_max, float(steps.max() + offset))
    long = frame.melt(
        id_vars=["arm", "stage", "step", "training_step"],
        value_vars=value_columns,
        var_name="entity",
        value_name="value",
    )
    long["entity"] = long["entity"].str.removeprefix(f"{metric}_")
    long[metric] = long["value"]
    return long.dropna(subset=["value"]).reset_index(drop=True)[columns]


def stage_scores(summary: Mapping[str, Any], metric: str | None = None) -> pd.DataFrame:
    """``metric`` (default ``f1``, else ``lm_loss``) at the end of every stage of every arm,
    from ``summary.json``: one row per (arm, stage), columns arm, stage, step, then one column
    per entity type (overall first)."""
    entries = [
        (arm, entry)
        for arm, data in summary.get("arms", {}).items()
        for entry in data.get("stages", [])
    ]
    if metric is None:
        metric = "f1" if any("f1" in e for _, e in entries) or not entries else "lm_loss"
    rows = []
    for arm, entry in entries:
        values = entry.get(metric, {})
        values = values if isinstance(values, Mapping) else {"overall": values}
        rows.append(
            {
                "arm": arm,
                "stage": entry.get("stage"),
                "step": entry.get("step"),
                **{str(k): v for k, v in values.items()},
            }
        )
    frame = pd.DataFrame(rows)
    if "overall" in frame.columns:
        frame = frame[
            [
                "arm",
                "stage",
                "step",
                "overall",
                *[c for c in frame.columns if c not in ("arm", "stage", "step", "overall")],
            ]
        ]
    frame.attrs["metric"] = metric
    return frame


# ---------------------------------------------------------------------------------------------
# Everything for one arm
# ---------------------------------------------------------------------------------------------


@dataclass
class ArmAnalysis:
    """All analyses of one arm (what the report shows)."""

    run: ArmRun
    layer_saliency: pd.DataFrame
    depth: pd.DataFrame
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
    n_boot: int = 1000,
    seed: int = 0,
) -> ArmAnalysis:
    """Run every analysis on one arm (similarities need ``embeddings``; without them the
    primed-neuron correlation is skipped and similarity columns are NaN)."""
    rankings = arm.rankings()
    can_prime = (
        embeddings is not None
        and concept_token_ids(arm.stages[arm.first].stats, arm.concept).numel() > 0
    )
    return ArmAnalysis(
        run=arm,
        layer_saliency=layer_saliency(rankings, top),
        depth=concept_depth(rankings, top, n_boot=n_boot, seed=seed),
        reappearance=reappearance(arm, n=n_reappeared, embeddings=embeddings),
        pruned=pruned_trace(arm, embeddings),
        primed=primed_neurons(arm, embeddings, n_boot=n_boot, seed=seed) if can_prime else None,
        primed_unsalient=(
            primed_neurons(arm, embeddings, n_boot=n_boot, seed=seed, start_saliency_below=0.5)
            if can_prime
            else None
        ),
        polysemanticity=polysemanticity(arm.stats(), arm.concept, vocabulary=arm.vocabulary),
    )
