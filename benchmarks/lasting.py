"""Re-derive recovery times from a committed sweep's per-seed curves: the first crossing of
90% of base (what the sweep reported as ``steps_to_recover_90``) beside lasting recovery (the
first step after which every evaluation stays at or above it), per cell and arm, across seeds,
and the paired concept-minus-random difference of each. Nothing is retrained: ``sweep.json``
stores every seed's curve (``cells.*.arms.*.curves``) and base F1.

    python benchmarks/lasting.py benchmarks/results/sweep-default-5seeds-cpu.json \\
        --json benchmarks/results/lasting-default-5seeds-cpu.json

The curves' grid is the sweep's (dense for the default run); "lasting" means within it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from neuroplastic.analysis.intervals import as_text
from neuroplastic.core.curves import RECOVERY_TARGET, recovery
from neuroplastic.experiment import sweep

#: the first crossing (what the committed sweeps report) and the recovery that lasts
STEPS = ("steps_to_recover_90", "lasting_recovery_90")


def per_seed(cell: dict[str, Any], arm: str, concept: str) -> list[dict[str, Any]]:
    """Each seed's recovery measures, read from its stored curve and base F1, in the shape
    :func:`neuroplastic.experiment.sweep.run_measures` gives an arm."""
    data = cell["arms"][arm]
    bases = data["f1"]["base"][concept]["values"]
    measured = []
    for curve, base in zip(data["curves"], bases, strict=True):
        recovered = recovery(curve, base, RECOVERY_TARGET)
        measured.append(
            {
                "steps_to_recover_90": recovered["steps_to_recover"],
                "lasting_recovery_90": recovered["steps_to_lasting_recovery"],
                "recovery": recovered,
            }
        )
    return measured


def rescore(path: Path) -> dict[str, Any]:
    result = json.loads(path.read_text())
    concept = result["config"]["concept"]
    out: dict[str, Any] = {"source": path.name, "concept": concept, "cells": {}}
    for name, cell in result["cells"].items():
        arms = {arm: per_seed(cell, arm, concept) for arm in cell["arms"] if arm != "naive"}
        entry: dict[str, Any] = {"seeds": cell["seeds"], "arms": {}}
        for arm, measured in arms.items():
            entry["arms"][arm] = {m: sweep._across(m, measured) for m in STEPS}
            entry["arms"][arm]["per_seed"] = [
                {
                    "first_crossing": m["steps_to_recover_90"],
                    "lasting": m["lasting_recovery_90"],
                    "target": m["recovery"]["target"],
                }
                for m in measured
            ]
        if {"concept", "random"} <= set(arms):
            entry["concept_minus_random"] = {
                m: sweep._paired_across(m, arms["concept"], arms["random"]) for m in STEPS
            }
        out["cells"][name] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_json", type=Path)
    parser.add_argument("--json", type=Path, help="write the re-derived measures here")
    args = parser.parse_args()
    result = rescore(args.sweep_json)
    for name, cell in result["cells"].items():
        for arm, data in cell["arms"].items():
            lasting = [s["lasting"] for s in data["per_seed"]]
            print(
                f"{name} {arm}: first crossing {as_text(data['steps_to_recover_90'])}; "
                f"lasting {as_text(data['lasting_recovery_90'])} "
                f"(per seed {', '.join('never' if v is None else f'{v:.1f}' for v in lasting)})"
            )
        if "concept_minus_random" in cell:
            diff = cell["concept_minus_random"]["lasting_recovery_90"]
            print(f"{name} concept - random, lasting: {as_text(diff)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
