"""`neuroplastic facts`: the held-out relearning study on facts (RTT), over seeds, or a grid of
such studies (``--grid``) side by side. Its flags are made from the settings' declarations
(:func:`neuroplastic.cli.parser.facts_flags`). Light at import: the study imports torch when it
runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields

from neuroplastic.errors import NeuroplasticError
from neuroplastic.facts_config import FactsConfig


def config_of(args: argparse.Namespace) -> FactsConfig:
    """The settings the flags give, checked: every setting with a flag is under its own name
    (:func:`neuroplastic.cli.parser.facts_flags`), a list one as a list or its default tuple."""
    given = {f.name: getattr(args, f.name) for f in fields(FactsConfig) if hasattr(args, f.name)}
    return FactsConfig.from_dict(given)


def run(args: argparse.Namespace) -> int:
    config = config_of(args)  # checked before torch loads

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    if args.grid:
        return _run_grid(args, config, log)
    from neuroplastic.experiment.facts_study import run_facts_study

    study = run_facts_study(config, args.seeds, args.out, log=log)
    from neuroplastic.report.facts_report import write_facts_report

    report = write_facts_report(args.out, study)
    _print_study(args, config, study)
    print(f"report: {report}")
    return 0


def _print_study(args: argparse.Namespace, config: FactsConfig, study: dict) -> None:
    from neuroplastic.analysis.intervals import as_text

    measures = study["measures"]
    print(f"facts study, {len(args.seeds)} seed(s), {args.out / 'facts.json'}:")
    for name in (
        "removal_drop_v",
        "control_drop_v",
        "removal_drop_retain",
        "removal_general_damage",
    ):
        print(f"  {name}: {as_text(measures[name])}")
    for protocol in config.protocols:
        for name in (
            f"{protocol}_removal_recovered",
            f"{protocol}_removal_recovered_net",
            f"{protocol}_none_gain",
        ):
            print(f"  {name}: {as_text(measures[name])}")
        if config.best_case_lrs or config.best_case_adapters:
            name = f"{protocol}_best_removal_recovered"
            print(f"  {name} (chosen after the fact): {as_text(measures[name])}")


def _grid_of(args: argparse.Namespace) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for key, values in args.grid:
        if key in grid:
            raise NeuroplasticError(f"--grid {key} is given twice; give its values once")
        grid[key] = values
    return grid


def _run_grid(args: argparse.Namespace, config: FactsConfig, log: Callable[[str], None]) -> int:
    from neuroplastic.experiment.facts_grid_plan import plan_facts_grid  # light: no torch

    grid = _grid_of(args)
    plan = plan_facts_grid(config, grid)  # every cell checked, before torch
    log(
        f"facts grid: {len(plan.cells)} cell(s) x {len(args.seeds)} seed(s) into {args.out}: "
        + ", ".join(cell.name for cell in plan.cells)
    )
    from neuroplastic.experiment.facts_grid import run_facts_grid
    from neuroplastic.report.facts_comparison import comparison_text, write_comparison_report
    from neuroplastic.report.facts_report import write_facts_report

    result = run_facts_grid(config, grid, args.seeds, args.out, log=log)
    for name, study in result["studies"].items():
        write_facts_report(args.out / name, study)
    page = write_comparison_report(args.out, result["comparison"])
    print(f"facts grid, {len(plan.cells)} cell(s), {len(args.seeds)} seed(s), means across seeds:")
    print(comparison_text(result["comparison"]))
    print(f"comparison: {page}")
    return 0
