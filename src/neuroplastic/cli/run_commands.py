"""`neuroplastic run` and `neuroplastic report`: one run directory, made or resumed, and its
page. Light at import: each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from neuroplastic.config import ExperimentConfig


def config_from_args(args: argparse.Namespace, lists: Sequence[str] = ()) -> ExperimentConfig:
    """The run's settings: the --preset's, then the --config file's, then every flag given
    (``lists`` settings excepted: a sweep's cells take several values)."""
    from neuroplastic.presets import load_preset

    settings = load_preset(args.preset) if getattr(args, "preset", None) else {}
    if args.config:
        settings.update(ExperimentConfig.load(args.config).to_dict())
    for name in ExperimentConfig().to_dict():
        value = getattr(args, name, None)
        if value is not None and name not in lists:
            settings[name] = value
    # Giving a count or a fraction alone says which selection is meant; both, without
    # --selection, would leave one of them silently unused.
    if args.selection is None and args.count is not None and args.fraction is not None:
        from neuroplastic.errors import NeuroplasticError

        raise NeuroplasticError(
            f"--fraction {args.fraction} and --count {args.count} both say how many neurons to "
            "hold; give one (or --selection fraction|count|per-layer to say which is used)"
        )
    if args.selection is None and (args.count is None) != (args.fraction is None):
        settings["selection"] = "count" if args.count is not None else "fraction"
    return ExperimentConfig.from_dict(settings)


def run(args: argparse.Namespace) -> int:
    # Settings first: torch takes seconds to import on a loaded machine.
    config = config_from_args(args)
    if not args.no_report:
        check_report_extra()
    from neuroplastic import distributed
    from neuroplastic.experiment.pipeline import run_experiment
    from neuroplastic.store.summary import Summary

    # Under torchrun / accelerate launch every process runs this; rank 0 alone writes and prints.
    try:
        summary = run_experiment(config, args.out, progress=not args.quiet)
        main = distributed.is_main()  # while the process group lasts
    except distributed.MainFailed:
        return 2  # rank 0 stopped and says why
    finally:
        distributed.finish()
    if not main:
        return 0
    print(f"summary: {args.out / 'summary.json'}")
    recorded = Summary.from_dict(summary)
    key = recorded.metric
    concept = config.concept if key == "f1" else "concept"
    for arm, result in recorded.arms.items():
        first, last = result.stages[1], result.stages[-1]
        print(
            f"  {arm:<8} {result.neurons} neurons: {config.concept} {key} "
            f"{first.score(key)[concept]:.3f} after pruning -> {last.score(key)[concept]:.3f} "
            f"after {last.step} retraining steps"
        )
    if not args.no_report:
        write_report(args.out)
    return 0


def check_report_extra() -> None:
    """Before the run, not after it: report.html's plots need the [report] extra."""
    from neuroplastic.extras import require

    require("plotly", "report.html (skip it with --no-report)")


def write_report(out: Path, similarity: str = "model", command: str = "run") -> None:
    """Write the report; say on stderr what it cannot show (an unfinished run, a stage whose
    files were deleted). A partial report is still a report: exit status 0."""
    from neuroplastic.report.run_report import run_warnings, write_report
    from neuroplastic.store.rundir import RunDir

    path = write_report(out, similarity=similarity)
    print(f"report: {path}")
    for warning in run_warnings(RunDir(out)):
        print(f"neuroplastic {command}: warning: {warning}", file=sys.stderr)


def report(args: argparse.Namespace) -> int:
    from neuroplastic.errors import NeuroplasticError
    from neuroplastic.store.rundir import directory_kind

    if directory_kind(args.run_dir) == "sweep":  # its report, rebuilt from its sweep.json
        from neuroplastic.extras import require
        from neuroplastic.report.sweep_report import write_sweep_report

        require("plotly", "report.html")
        print(f"report: {write_sweep_report(args.run_dir)}")
        return 0
    if not args.run_dir.exists():
        raise NeuroplasticError(
            f"{args.run_dir} does not exist; give the directory of a run (`neuroplastic run "
            "--out DIR` makes one)"
        )
    if not args.run_dir.is_dir():
        raise NeuroplasticError(
            f"{args.run_dir} is a file, not a run directory; give the directory `neuroplastic "
            "run --out DIR` wrote"
        )
    if not (args.run_dir / "config.json").is_file():
        raise NeuroplasticError(
            f"{args.run_dir} is not a run directory (no config.json); make one with "
            "`neuroplastic run --out DIR`"
        )
    from neuroplastic.extras import require

    require("plotly", "report.html")
    write_report(args.run_dir, args.similarity, command="report")
    return 0
