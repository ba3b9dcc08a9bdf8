"""Seeds as the unit of replication: one run per (mode, method, seed), then intervals across seeds.

    DIR/{mode}-{method}/seed-{s}/    an ordinary run directory (resumable; finished ones skipped)
    DIR/sweep.json                   per cell, mean and 95% t-interval across seeds of each measure
    DIR/report.html                  the same, with recovery curves (neuroplastic.sweep_report)

Each measure is computed per run (:func:`run_measures`) and only then aggregated, so an interval
is over independent runs, never over neurons of one model. Because both arms of a run are paired
(same batches, dropout and schedule), the concept-minus-random difference is computed per seed
first and its interval is the paired one. The same holds for the prediction of where the
concept goes (:mod:`neuroplastic.predict`): each run's AUC and precision at k per predictor and
ground truth, then their mean and interval across seeds (:func:`neuroplastic.predict.across_seeds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from neuroplastic.config import ExperimentConfig
from neuroplastic.curves import recovery_auc, steps_to_recover
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment import run_experiment
from neuroplastic.io import atomic_write_json
from neuroplastic.progress import report_line
from neuroplastic.rundir import RunDir

RECOVERY_TARGET = 0.9  # "recovered": concept F1 back to 90% of its base value
#: the per-run measures, in reading order, with what each one means
MEASURES = {
    "drop_at_pruning": "concept F1 lost at pruning (base - pruned)",
    "steps_to_recover_90": "retraining steps until concept F1 is back to 90% of base "
    "(interpolated between evaluations; runs that never get there are left out and counted)",
    "recovery_auc": "mean of concept F1 / base F1 over the retraining steps (1 = never lost)",
    "final_gap_to_base": "concept F1 after the last stage minus base",
    "depth_change": "change of the top neurons' saliency-weighted mean layer, last stage - base "
    "(negative: the concept moved to earlier layers)",
    "primed_rho": "Spearman rho between a neuron's similarity to the concept before pruning "
    "and its saliency gain while retraining",
}


def cell_name(mode: str, method: str) -> str:
    return f"{mode}-{method}"


def run_sweep(
    base: ExperimentConfig,
    out: str | Path,
    seeds: Sequence[int],
    modes: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    top: int | float = 0.01,
    progress: bool = True,
    log: Callable[[str], Any] = report_line,
) -> dict[str, Any]:
    """Run (or resume) every cell of the sweep into ``out``; write and return ``sweep.json``."""
    if base.task != "ner":
        raise NeuroplasticError(
            "sweep measures recovery of entity F1, so it needs --task ner; run --task lm "
            "experiments one by one with `neuroplastic run`"
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise NeuroplasticError(f"give distinct seeds, e.g. --seeds 0,1,2; got {list(seeds)}")
    out = Path(out)
    modes, methods = list(modes or [base.mode]), list(methods or [base.method])
    runs: dict[str, dict[int, Path]] = {}
    for mode in modes:
        for method in methods:
            cell = cell_name(mode, method)
            for seed in seeds:
                config = replace(base, mode=mode, method=method, seed=seed)  # validates
                path = out / cell / f"seed-{seed}"
                if _finished(path, config):
                    log(f"[sweep] {cell} seed {seed}: done ({path})")
                else:
                    log(f"[sweep] {cell} seed {seed}: {path}")
                    run_experiment(config, path, progress=progress, log=log)
                runs.setdefault(cell, {})[seed] = path
    result = {
        "config": base.to_dict(),
        "seeds": list(seeds),
        "modes": modes,
        "methods": methods,
        "measures": MEASURES,
        "cells": {
            cell: aggregate([run_measures(path, top=top) for path in paths.values()])
            for cell, paths in runs.items()
        },
    }
    atomic_write_json(out / "sweep.json", result)
    return result


def _finished(path: Path, config: ExperimentConfig) -> bool:
    """A finished run of exactly these settings (another config is refused by the run)."""
    run = RunDir(path)
    if not (run.summary_path.is_file() and run.config_path.is_file()):
        return False
    existing = ExperimentConfig.from_dict(run.config(), source=str(run.config_path))
    return not config.differences(existing)


# -- one run -----------------------------------------------------------------------------------
def run_measures(run_dir: str | Path, top: int | float = 0.01) -> dict[str, Any]:
    """The sweep's measures of one finished run, per arm, plus its stage scores and curves."""
    from neuroplastic.analysis import ArmRun, concept_depth, concept_token_ids, primed_neurons
    from neuroplastic.similarity import TokenEmbeddings

    run = RunDir(run_dir)
    summary = run.summary()
    concept = summary["config"]["concept"]
    metrics = run.metrics()
    embeddings = TokenEmbeddings.from_run(run)
    arms: dict[str, Any] = {}
    for arm, data in summary["arms"].items():
        stages = {entry["stage"]: entry for entry in data["stages"]}
        base_f1 = stages["base"]["f1"][concept]
        last = data["stages"][-1]
        curve = _curve(metrics, arm, concept)
        loaded = ArmRun.load(run, arm)
        depth = concept_depth(loaded.rankings(), top).set_index("stage")["mean_layer"]
        can_prime = concept_token_ids(loaded.stages[loaded.first].stats, concept).numel() > 0
        arms[arm] = {
            "drop_at_pruning": base_f1 - stages["pruned"]["f1"][concept],
            "steps_to_recover_90": steps_to_recover(curve, RECOVERY_TARGET * base_f1)
            if base_f1 > 0
            else math.nan,
            "recovery_auc": recovery_auc(curve, base_f1),
            "final_gap_to_base": last["f1"][concept] - base_f1,
            "depth_change": float(depth[loaded.last] - depth[loaded.first]),
            "primed_rho": primed_neurons(loaded, embeddings).rho if can_prime else math.nan,
            "f1": {entry["stage"]: entry["f1"] for entry in data["stages"]},
            "curve": curve.to_dict(orient="list"),
        }
    return {
        "seed": summary["config"]["seed"],
        "concept": concept,
        "arms": arms,
        # per predictor and truth, as the run's summary evaluated them (none in older runs)
        "prediction": summary.get("prediction", []),
    }


def _curve(metrics: pd.DataFrame, arm: str, concept: str) -> pd.DataFrame:
    """Concept F1 against retraining step (pruning is step 0), one row per evaluation."""
    rows = metrics[(metrics["arm"] == arm) & (metrics["step"] >= 0)]
    rows = rows[~rows["stage"].isin(["base"]) & ~rows["stage"].str.startswith("base@")]
    curve = pd.DataFrame({"step": rows["step"].astype(float), "f1": rows[f"f1_{concept}"]})
    return curve.sort_values("step", kind="stable").reset_index(drop=True)


def _minus(a: float | None, b: float | None) -> float:
    return math.nan if a is None or b is None else a - b


# -- across seeds ------------------------------------------------------------------------------
def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and t-interval of the finite values; ``n`` counts them, ``missing`` the others."""
    array = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    finite = array[np.isfinite(array)]
    # None, not NaN, where there is no number: sweep.json stays valid JSON.
    result: dict[str, Any] = {
        "mean": float(finite.mean()) if len(finite) else None,
        "ci_low": None,
        "ci_high": None,
        "n": int(len(finite)),
        "missing": int(len(array) - len(finite)),
        "values": [float(v) if np.isfinite(v) else None for v in array],
    }
    if len(finite) >= 2:
        half = scipy_stats.t.ppf(0.5 + confidence / 2, len(finite) - 1) * finite.std(ddof=1)
        half /= math.sqrt(len(finite))
        result["ci_low"], result["ci_high"] = result["mean"] - half, result["mean"] + half
    return result


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% interval across runs (seeds) of every measure and stage score, per arm, and
    of the per-seed concept-minus-random difference (paired)."""
    arms = list(runs[0]["arms"])
    result: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "arms": {}}
    for arm in arms:
        per_arm = [r["arms"][arm] for r in runs]
        stages = list(per_arm[0]["f1"])
        result["arms"][arm] = {
            **{m: interval([a[m] for a in per_arm]) for m in MEASURES},
            "f1": {
                stage: {
                    entity: interval([a["f1"][stage][entity] for a in per_arm])
                    for entity in per_arm[0]["f1"][stage]
                }
                for stage in stages
            },
            "curves": [a["curve"] for a in per_arm],
        }
    if "random" in arms:
        result["concept_minus_random"] = {
            m: interval([_minus(r["arms"]["concept"][m], r["arms"]["random"][m]) for r in runs])
            for m in MEASURES
        }
    prediction = prediction_across_seeds(runs)
    if prediction:
        result["prediction"] = prediction
    return result


def prediction_across_seeds(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% t-interval across seeds of each predictor's AUC, precision at k and
    precision lift (precision minus the base rate), per ground truth, for the concept arm;
    ``n_seeds`` counts the runs where the measure is defined, ``missing`` the others (a run
    whose ground truth had no positive neuron). Runs without predictions are left out."""
    from neuroplastic.predict import across_seeds

    per_seed = {}
    for run in runs:
        rows = [row for row in run.get("prediction", []) if row.get("arm", "concept") == "concept"]
        if rows:
            # None (no number in the summary's JSON) back to NaN: a measure not defined.
            measures = {"auc": float, "precision_at_k": float, "base_rate": float}
            per_seed[run["seed"]] = pd.DataFrame(rows).astype(measures)
    if not per_seed:
        return []
    frame = across_seeds(per_seed)
    return [
        {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        for row in frame.to_dict("records")
    ]
