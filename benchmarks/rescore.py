"""Re-score finished runs with this version's analyses, from their stored stage files: the
predictors against the rank truths (``summary.json`` ``prediction``) and the primed-neuron
correlations, per seed and across seeds, for a sweep cell's ``seed-*`` run directories.

    python benchmarks/rescore.py SWEEP/CELL --json prediction.json --primed-json primed.json

How benchmarks/results/prediction-paired-population-5seeds-cpu.json and
primed-paired-population-5seeds-cpu.json were made (from the runs of the group-by-length
sweep's reference cell, identical to the default sweep's hold runs). Nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from neuroplastic.analysis.intervals import as_text, interval, paired
from neuroplastic.experiment.summary import _prediction
from neuroplastic.experiment.sweep import run_measures
from neuroplastic.store.rundir import RunDir

PREDICTORS = (
    "similarity",
    "saliency_base",
    "saliency_pruned",
    "gradient",
    "coactivation",
    "random",
)
AUC = (0.0, 1.0)


def predictions(runs: list[Path]) -> dict:
    rows = []
    for path in runs:
        seed = RunDir(path).config()["seed"]
        rows += [
            {**row, "seed": seed}
            for row in _prediction(RunDir(path), ["concept", "random"])["prediction"]
        ]
    frame = pd.DataFrame(rows)
    result: dict = {"per_predictor": {}, "rows": rows}
    for predictor in PREDICTORS:
        entry = {}
        for truth in ("gain", "last_top"):
            chosen = frame[(frame.predictor == predictor) & (frame.truth == truth)]
            by_arm = {arm: g.sort_values("seed").auc.tolist() for arm, g in chosen.groupby("arm")}
            for arm, values in by_arm.items():
                entry[f"{arm}/{truth}"] = interval(values, bounds=AUC)
            difference = [c - r for c, r in zip(by_arm["concept"], by_arm["random"], strict=True)]
            entry[f"concept_minus_control/{truth}"] = paired(difference, 0.05, (-1.0, 1.0))
        result["per_predictor"][predictor] = entry
        print(predictor, {k: as_text(v) for k, v in entry.items()})
    return result


def primed(runs: list[Path]) -> dict:
    per_seed = []
    for path in runs:
        arms = run_measures(path)["arms"]
        keys = ("primed_rho", "primed_partial_rho")
        per_seed.append({arm: {k: arms[arm][k] for k in keys} for arm in ("concept", "random")})
    across = {}
    for key in ("primed_rho", "primed_partial_rho"):
        concept = [seed["concept"][key] for seed in per_seed]
        control = [seed["random"][key] for seed in per_seed]
        across[key] = {
            "concept": interval(concept, bounds=(-1.0, 1.0)),
            "random": interval(control, bounds=(-1.0, 1.0)),
            "concept_minus_random": paired(
                [c - r for c, r in zip(concept, control, strict=True)], 0.1, (-2.0, 2.0)
            ),
        }
        print(key, {k: as_text(v) for k, v in across[key].items()})
    return {"per_seed": per_seed, "across_seeds": across}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell", type=Path, help="a sweep cell's directory (holds seed-*/)")
    parser.add_argument("--json", type=Path, help="write the predictors' scores here")
    parser.add_argument("--primed-json", type=Path, help="write the primed correlations here")
    args = parser.parse_args()
    runs = sorted(args.cell.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    if args.json:
        args.json.write_text(json.dumps(predictions(runs), indent=1))
    if args.primed_json:
        args.primed_json.write_text(json.dumps(primed(runs), indent=1))


if __name__ == "__main__":
    main()
