"""`neuroplastic sweep`: one run per cell and seed, planned and counted before any starts, then
intervals across seeds. Light at import: the sweep imports what it needs when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from neuroplastic.cli.run_commands import check_report_extra, config_from_args
from neuroplastic.config import CONCEPT_ARM, RANDOM_ARM, RECOVERY_TARGET

#: the settings whose flags take several values in a sweep, one cell each
CELL_SETTINGS = ("mode", "method")


def sweep(args: argparse.Namespace) -> int:
    from neuroplastic.errors import NeuroplasticError
    from neuroplastic.experiment.sweep_plan import plan_sweep  # light: no torch

    config = config_from_args(args, lists=CELL_SETTINGS)
    if not args.no_report:
        check_report_extra()
    grid: dict[str, list[Any]] = {}
    for key, values in args.grid or []:
        if key in grid:
            raise NeuroplasticError(f"--grid {key} is given twice; give its values once")
        grid[key] = values
    # --grid mode=... and method=... are spellings of --mode and --method.
    modes, methods = args.mode, args.method
    for key, given in (("mode", modes), ("method", methods)):
        if key in grid and given:
            raise NeuroplasticError(f"give --{key} or --grid {key}=..., not both")
    modes = grid.pop("mode", None) or modes
    methods = grid.pop("method", None) or methods
    plan = plan_sweep(config, args.seeds, modes, methods, grid)  # every run, before torch
    if not args.only_finished:
        runs, cells = len(plan.runs), len(plan.settings)
        count = (
            f"{runs} run{'s' if runs != 1 else ''} ({cells} cell{'s' if cells != 1 else ''} x "
            f"{len(args.seeds)} seed{'s' if len(args.seeds) != 1 else ''})"
        )
        if runs > args.max_runs:
            raise NeuroplasticError(
                f"this sweep makes {count}, more than --max-runs {args.max_runs}; give "
                f"--max-runs {runs} to run them all, or fewer --grid values or seeds"
            )
        if not args.quiet:  # before the first run starts (finished runs are skipped)
            print(f"sweep: {count} into {args.out}", file=sys.stderr, flush=True)
    from neuroplastic.experiment.sweep import run_sweep

    executor = None
    if args.executor == "ray":
        from neuroplastic.experiment.ray_executor import RayExecutor

        executor = RayExecutor(
            args.ray_address, args.cpus_per_run, args.gpus_per_run, quiet=args.quiet
        )
    else:
        for flag, value, default in (
            ("--ray-address", args.ray_address, None),
            ("--cpus-per-run", args.cpus_per_run, 1.0),
            ("--gpus-per-run", args.gpus_per_run, 0.0),
        ):
            if value != default:
                raise NeuroplasticError(f"{flag} is for --executor ray; add --executor ray")
    result = run_sweep(
        config,
        args.out,
        seeds=args.seeds,
        modes=modes,
        methods=methods,
        progress=not args.quiet,
        grid=grid,
        executor=executor,
        only_finished=args.only_finished,
    )
    from neuroplastic.analysis.intervals import as_text as _mean_ci  # as the sweep report shows

    print(f"sweep: {args.out / 'sweep.json'}")
    for cell, data in result["cells"].items():
        drop = data["arms"][CONCEPT_ARM]["drop_at_pruning"]
        if config.task == "lm":
            specific = data["arms"][CONCEPT_ARM]["specificity_at_pruning"]
            print(
                f"  {cell}: {config.concept} next-token loss rise at the removal "
                f"{_mean_ci(drop)} nats, {_mean_ci(specific)} more than the other tokens', "
                "across seeds"
            )
        else:
            print(f"  {cell}: {config.concept} F1 drop at pruning {_mean_ci(drop)} across seeds")
        for entry in data.get("chase", {}).get("per_round", []):
            arms = entry["arms"]
            print(
                f"    round {entry['round']}: {config.concept} F1 after retraining, concept arm "
                f"{_mean_ci(arms[CONCEPT_ARM]['retrained'])}"
                + (
                    f", random arm {_mean_ci(arms[RANDOM_ARM]['retrained'])}"
                    if RANDOM_ARM in arms
                    else ""
                )
            )
        if "preempt" in data:
            difference = data["preempt"]["preempt_minus_control"]
            print(
                f"    pre-empting by {data['preempt']['predictor']} minus its control: steps to "
                f"{RECOVERY_TARGET:.0%} {_mean_ci(difference['steps_to_recover_90'])}, "
                f"recovery AUC {_mean_ci(difference['recovery_auc'])}"
            )
    if not args.no_report:
        from neuroplastic.report.sweep_report import write_sweep_report

        print(f"report: {write_sweep_report(args.out)}")
    return 0
