"""What happened to the candidates of :mod:`neuroplastic.analysis.predict` (the ground truth),
how well each predictor named it, one run at a time, and the mean and interval across seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats
from torch import Tensor

from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.intervals import interval
from neuroplastic.analysis.predictions import Predictions
from neuroplastic.analysis.predictors import Mask, Scores, _only, survivors
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.errors import NeuroplasticError

__all__ = [
    "SEED_MEASURES",
    "GroundTruth",
    "across_seeds",
    "evaluate_arm",
    "evaluate_predictions",
    "ground_truth",
    "paired_population",
    "precision_at_k",
    "roc_auc",
]


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """What happened between the pruned stage and the last one, among the candidates."""

    #: survivors live at both stages: the population every predictor is judged on
    candidates: Mask
    #: saliency at the last stage minus at the pruned stage (NaN outside ``candidates``)
    gain: Scores
    #: ``gain``: the top ``top`` share of candidates by (positive) gain; ``entered``: in the top
    #: share at the last stage and not at the pruned stage
    positives: dict[str, Mask]
    top: float

    @property
    def n_candidates(self) -> int:
        return int(self.candidates.sum())


def ground_truth(
    pruned: Ranking,
    last: Ranking,
    removed: NeuronSet,
    top: float = 0.01,
    population: Mask | None = None,
) -> GroundTruth:
    """The neurons that took the concept over, two ways, among the survivors live at both stages.

    * ``gain``: the ``top`` share (at least one) of candidates with the largest saliency gain
      from ``pruned`` to ``last``, counting only positive gains (a neuron that lost saliency took
      nothing over).
    * ``entered``: candidates in the top ``top`` share by saliency at ``last`` that were not in
      it at ``pruned``. Both top shares are taken among the candidates, so the two stages are
      cut over the same population.
    * ``last_top``: candidates in the top ``top`` share by saliency at ``last``. The two above
      are built from the pruned saliency, which is also a predictor (``saliency_pruned``), so
      that predictor is scored partly against itself (regression to the mean); this truth
      contains no predictor. Score every predictor on the control arm too: its null.

    Saliency here is each stage's normalized rank among the candidates alone (ties share their
    average rank), so a gain is a survivor's movement against the same neurons at both stages,
    never an artefact of others dying, regrowing or being removed. ``population``: a mask the
    candidates must also lie in; give the treatment and its control one population (alive in
    both arms at both stages, outside both removed sets: :func:`paired_population`), or the
    paired difference compares predictions on different neurons. A neuron tied with the last
    one in is in too, so a set can exceed the share; index order never decides.
    """
    if not 0 < top <= 1:
        raise NeuroplasticError(f"top must be a fraction in (0, 1]; got {top}")
    if pruned.scores.shape != last.scores.shape:
        raise NeuroplasticError(
            f"the pruned and last rankings have different shapes: {tuple(pruned.scores.shape)} "
            f"vs {tuple(last.scores.shape)}"
        )
    candidates = survivors(pruned.alive & last.alive, removed)
    if population is not None:
        candidates &= population.bool()
    n = int(candidates.sum())
    if n == 0:
        raise NeuroplasticError("no neuron survives at both stages: nothing to predict")
    n_top = max(1, round(top * n))
    before, after = pruned.saliency_among(candidates), last.saliency_among(candidates)
    gain = _only(after - before, candidates)
    return GroundTruth(
        candidates=candidates,
        gain=gain,
        positives={
            "gain": _top_mask(gain, candidates & (gain > 0), n_top),
            "entered": _top_mask(after, candidates, n_top) & ~_top_mask(before, candidates, n_top),
            "last_top": _top_mask(after, candidates, n_top),
        },
        top=top,
    )


def paired_population(
    arms: Sequence[tuple[Ranking, Ranking, NeuronSet]],
) -> Mask:
    """The neurons a treatment and its controls can all be scored on: alive at both stages in
    every arm (``(pruned, last, removed)`` each) and in no arm's removed set."""
    population = None
    for pruned, last, removed in arms:
        mask = survivors(pruned.alive & last.alive, removed)
        population = mask if population is None else population & mask
    if population is None:
        raise NeuroplasticError("no arms: no population to score them on")
    return population


#: values this close to the cut count as tied with it: float64 round-off of saliency
#: differences is ~1e-16, while two distinct saliencies differ by at least 1 / n_alive^2.
_TIE = 1e-12


def _top_mask(values: Tensor, among: Mask, n_top: int) -> Mask:
    """The ``n_top`` largest ``values`` among ``among``, with every value tied to the last."""
    pool = values[among]
    if len(pool) == 0:
        return torch.zeros_like(among)
    threshold = pool.topk(min(n_top, len(pool))).values[-1]
    return among & (values >= threshold - _TIE)


# ---------------------------------------------------------------------------------------------
# Scoring a prediction
# ---------------------------------------------------------------------------------------------


def _as_arrays(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat float scores (NaN -> -inf: a neuron a predictor cannot score ranks last) and bools."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=float)
    y = np.asarray(positive.cpu() if isinstance(positive, Tensor) else positive, dtype=bool)
    s, y = s.ravel(), y.ravel()
    if s.shape != y.shape:
        raise NeuroplasticError(f"{len(s)} scores but {len(y)} labels")
    return np.where(np.isnan(s), -np.inf, s), y


def roc_auc(scores: Any, positive: Any) -> float:
    """ROC AUC: the chance that a random positive scores above a random negative, ties counting
    one half (Mann-Whitney U / (n1 n0) with average ranks). NaN without both classes."""
    s, y = _as_arrays(scores, positive)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = scipy_stats.rankdata(s, method="average")
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def precision_at_k(scores: Any, positive: Any, k: int | None = None) -> float:
    """Share of positives among the ``k`` highest scores (``k`` defaults to the number of
    positives; NaN when there are none). Scores tied at the cut count by their share of
    positives, the expectation over random tie-breaks, so index order never decides."""
    s, y = _as_arrays(scores, positive)
    k = int(y.sum()) if k is None else int(k)
    if k == 0:
        return math.nan
    if not 0 < k <= len(s):
        raise NeuroplasticError(f"k must be between 1 and the {len(s)} candidates; got {k}")
    threshold = np.sort(s)[::-1][k - 1]
    above, tied = s > threshold, s == threshold
    hits = y[above].sum() + (k - above.sum()) * y[tied].mean()
    return float(hits / k)


def evaluate_predictions(
    predictions: Predictions | Mapping[str, Scores], truth: GroundTruth, k: int | None = None
) -> pd.DataFrame:
    """ROC AUC and precision at ``k`` (default: the number of positives) of every predictor
    against every ground truth, over ``truth.candidates``: the same population for every
    predictor. A candidate a predictor left NaN ranks below all others (``n_unscored`` counts
    them).

    Columns: predictor, truth, auc, precision_at_k, k, n_candidates, n_positive, n_unscored,
    base_rate (n_positive / n_candidates: the precision of a random guess). One run's
    description; its spread comes from seeds (:func:`across_seeds`).
    """
    scores = predictions.scores if isinstance(predictions, Predictions) else dict(predictions)
    candidates = truth.candidates
    rows = []
    for name, values in scores.items():
        if tuple(values.shape) != tuple(candidates.shape):
            raise NeuroplasticError(
                f"predictor {name!r} scores shape {tuple(values.shape)} but the ground truth is "
                f"over {tuple(candidates.shape)} neurons"
            )
        values = values.cpu()[candidates]
        for truth_name, positive in truth.positives.items():
            labels = positive[candidates]
            n_positive = int(labels.sum())
            rows.append(
                {
                    "predictor": name,
                    "truth": truth_name,
                    "auc": roc_auc(values, labels),
                    "precision_at_k": precision_at_k(values, labels, k) if n_positive else math.nan,
                    "k": n_positive if k is None else k,
                    "n_candidates": len(labels),
                    "n_positive": n_positive,
                    "n_unscored": int(values.isnan().sum()),
                    "base_rate": n_positive / len(labels),
                }
            )
    return pd.DataFrame(rows)


def evaluate_arm(
    arm: ArmRun,
    predictions: Predictions,
    top: float = 0.01,
    start: str | None = None,
    end: str | None = None,
    rankings: tuple[Ranking, Ranking] | None = None,
    population: Mask | None = None,
) -> pd.DataFrame:
    """:func:`evaluate_predictions` for one arm of a run: the ground truth from its rankings at
    ``start`` (default ``pruned``) and ``end`` (default the last stage) and its removed set.
    ``rankings``: the two stages' rankings to build the truth from instead (the run passes
    those of the truth half of the probe sentences: :mod:`neuroplastic.core.halves`);
    ``population``: the neurons shared with the arms it is compared with
    (:func:`paired_population`)."""
    start, end = start or arm.start, end or arm.last
    for stage in (start, end):
        if stage not in arm.stages:
            raise NeuroplasticError(
                f"arm {arm.arm!r} has no stage {stage!r}; stages: {', '.join(arm.stages)}"
            )
    before, after = rankings or (arm.stages[start].ranking, arm.stages[end].ranking)
    truth = ground_truth(before, after, arm.ablated, top, population)
    return evaluate_predictions(predictions, truth)


# ---------------------------------------------------------------------------------------------
# Across seeds
# ---------------------------------------------------------------------------------------------

#: measures aggregated across seeds; ``precision_lift`` is precision at k minus the base rate
SEED_MEASURES = ("auc", "precision_at_k", "precision_lift")


def across_seeds(
    per_seed: Mapping[Any, pd.DataFrame] | Sequence[pd.DataFrame], confidence: float = 0.95
) -> pd.DataFrame:
    """Mean and t-interval across seeds of every measure, per predictor and truth.

    ``per_seed`` holds one :func:`evaluate_predictions` frame per seed (a mapping seed -> frame,
    or a list). Each seed's number is one sample; the interval is
    ``mean +/- t(confidence, n-1) * sd / sqrt(n)`` over the ``n`` seeds where the measure is
    defined (``missing`` counts the others; no interval below 2 seeds). Never over neurons.

    Columns: predictor, truth, measure (auc, precision_at_k, precision_lift), n_seeds, missing,
    mean, ci_low, ci_high. For reading against chance: AUC 0.5, precision lift 0.
    """
    frames = dict(per_seed) if isinstance(per_seed, Mapping) else dict(enumerate(per_seed))
    if not frames:
        raise NeuroplasticError("no per-seed evaluations to aggregate")
    needed = {"predictor", "truth", "auc", "precision_at_k", "base_rate"}
    parts = []
    for seed, frame in frames.items():
        missing_columns = needed - set(frame.columns)
        if missing_columns:
            raise NeuroplasticError(
                f"seed {seed}: the evaluation lacks columns {', '.join(sorted(missing_columns))}; "
                "pass frames from evaluate_predictions"
            )
        if frame.duplicated(["predictor", "truth"]).any():
            raise NeuroplasticError(f"seed {seed}: a predictor and truth appear twice")
        parts.append(frame.assign(seed=seed))
    frame = pd.concat(parts, ignore_index=True)
    frame["precision_lift"] = frame["precision_at_k"] - frame["base_rate"]
    rows = []
    for (predictor, truth), group in frame.groupby(["predictor", "truth"], sort=False):
        for measure in SEED_MEASURES:
            values = group[measure].to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            spread = interval(list(finite), confidence)  # one t-interval for the package
            low = math.nan if spread["ci_low"] is None else spread["ci_low"]
            high = math.nan if spread["ci_high"] is None else spread["ci_high"]
            rows.append(
                {
                    "predictor": predictor,
                    "truth": truth,
                    "measure": measure,
                    "n_seeds": len(finite),
                    "missing": len(values) - len(finite),
                    "mean": float(finite.mean()) if len(finite) else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)
