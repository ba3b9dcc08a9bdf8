"""Which neurons carry the concept again, and were they ready for it?

* :func:`reappearance` -- which surviving neurons took the concept over (largest saliency gain
  from the pruned stage to the last), with their top tokens before and after.
* :func:`pruned_trace` -- do the pruned neurons come back (``regrow`` mode), and with the same
  meaning? Their saliency and the similarity of their top tokens to their original ones.
* :func:`primed_neurons` -- does a neuron's similarity to the concept before pruning go with
  how much saliency it gains? Spearman's rho over the neurons (a description of one model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool
from scipy import stats as scipy_stats
from torch import Tensor

from neuroplastic.analysis.arm_run import ArmRun, concept_share
from neuroplastic.core.ranking import alive_neurons
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.errors import NeuroplasticError

__all__ = [
    "PrimedNeurons",
    "PrunedTrace",
    "partial_spearman",
    "primed_neurons",
    "pruned_trace",
    "reappearance",
]


def reappearance(
    arm: ArmRun,
    n: int = 20,
    start: str | None = None,
    end: str | None = None,
    embeddings: TokenEmbeddings | None = None,
) -> pd.DataFrame:
    """The ``n`` neurons outside the ablated set that gained most saliency from ``start``
    (default ``pruned``) to ``end`` (default the last stage), saliency re-ranked among those
    live at both stages (the others have no saliency to gain and are left out):
    ``saliency_start`` and ``saliency_end`` are those re-ranked values, ``saliency_base`` the
    base stage's own.

    Columns: layer, neuron, saliency_base, saliency_start, saliency_end, gain, rank_end,
    concept_share_base, concept_share_end, tokens_base, tokens_end (top tokens at the first and
    the ``end`` stage) and similarity (of those two token sets; NaN without ``embeddings``).
    """
    start, end = start or arm.start, end or arm.last
    first, before, after = arm._stage(arm.first), arm._stage(start), arm._stage(end)
    candidate = before.ranking.alive & after.ranking.alive & ~arm.ablated.mask()
    # Re-ranked among the candidates: a neuron regrowing or dying moves no candidate's gain.
    saliency_start = before.ranking.saliency_among(candidate)
    saliency_end = after.ranking.saliency_among(candidate)
    gain = saliency_end - saliency_start
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
            "saliency_start": saliency_start[layers, neurons].numpy(),
            "saliency_end": saliency_end[layers, neurons].numpy(),
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
    #: similarity read from the predict half of the probe sentences and gain from the truth
    #: half (:class:`~neuroplastic.analysis.arm_run.ProbeHalves`); False: both from all of them
    halves: bool = False


def primed_neurons(
    arm: ArmRun,
    embeddings: TokenEmbeddings,
    start: str | None = None,
    end: str | None = None,
    concept_tokens: Sequence[int] | None = None,
    start_saliency_below: float | None = None,
    population: Bool[Tensor, "layer neuron"] | None = None,
) -> PrimedNeurons:
    """Does similarity to the concept before pruning go with the saliency gain from ``start``
    (default ``pruned``) to ``end`` (default last)? A positive rho says the concept came back
    in neurons that were already near it ("primed"), as Lo et al. report.

    ``concept_tokens`` defaults to :func:`concept_token_ids` of the first stage. Neurons dead at
    the first stage, at ``start`` or at ``end``, and those whose top tokens have no embedding,
    are left out. Saliency at both stages is re-ranked among the neurons kept.
    ``start_saliency_below`` keeps only neurons with room to gain. ``population``: the neurons
    to compare over (:func:`~neuroplastic.analysis.polysemantic.common_population` of the
    run's arms, so that an arm and its control are correlated over the same neurons).
    """
    start, end = start or arm.start, end or arm.last
    base = arm._stage(arm.first)
    # Similarity from the predict half's top tokens, gain from the truth half's rankings,
    # where the run split its probe sentences: one sample's noise is not shared by both.
    halves = arm.halves
    if halves is not None and not {start, end} <= set(halves.truth):
        halves = None
    readable = (
        halves.split.in_predict(base.stats.top_sentence)
        if halves is not None
        else torch.ones_like(base.stats.top_token, dtype=torch.bool)
    )
    if concept_tokens is None:
        z = base.stats.label_index(arm.concept)
        concept_tokens = base.stats.top_token[(base.stats.top_label == z) & readable].unique()
        concept_tokens = concept_tokens.tolist()
    if len(concept_tokens) == 0:
        raise NeuroplasticError(
            f"no token labelled {arm.concept!r} among the top tokens of stage {arm.first!r}: "
            "cannot measure similarity to the concept"
        )
    n_layers, d_mlp = base.stats.n_layers, base.stats.d_mlp
    similarity = embeddings.similarity_many(
        base.stats.top_token.reshape(n_layers * d_mlp, -1).contiguous(),
        torch.tensor(list(concept_tokens)),
        mask_a=readable.reshape(n_layers * d_mlp, -1),
    ).reshape(n_layers, d_mlp)
    if halves is not None:
        first, last = halves.truth[start], halves.truth[end]
    else:
        first, last = arm._stage(start).ranking, arm._stage(end).ranking
    keep = ~arm.ablated.mask() & alive_neurons(base.stats) & similarity.isfinite()
    keep &= first.alive & last.alive
    if population is not None:
        keep &= population.bool()
    # Re-ranked among the neurons compared: a neuron regrowing (regrow mode) or dying between
    # the stages moves no compared neuron's saliency.
    start_saliency = first.saliency_among(keep)
    gain = last.saliency_among(keep) - start_saliency
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
        return PrimedNeurons(float("nan"), len(x), start, end, frame, halves=halves is not None)
    rho = scipy_stats.spearmanr(x, y).statistic
    return PrimedNeurons(
        float(rho),
        len(x),
        start,
        end,
        frame,
        rho_with_start=_spearman(x, before),
        partial_rho=partial_spearman(x, before + y, before),
        halves=halves is not None,
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
