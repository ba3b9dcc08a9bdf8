"""`neuroplastic facts`: the held-out relearning study on facts (RTT), over seeds, or a grid of
such studies (``--grid``) side by side. Light at import: the study imports torch when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from neuroplastic.cli.arguments import comma_values, grid_parts, int_list, positive_int
from neuroplastic.errors import NeuroplasticError
from neuroplastic.facts_config import (
    ADAPTERS,
    DEFAULT_PROTOCOLS,
    FACT_RANKERS,
    PROTOCOLS,
    RELATIONS,
    REMOVALS,
    FactsConfig,
)
from neuroplastic.presets import FACTS_PRESETS, facts_preset_flags


def _protocols(text: str) -> list[str]:
    values = comma_values(text, "heldout,unrelated")
    unknown = [v for v in values if v not in PROTOCOLS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown protocol {unknown[0]!r}; choose from {', '.join(PROTOCOLS)}"
        )
    return values


def _rates(text: str) -> list[float]:
    try:
        return [float(v) for v in comma_values(text, "1e-5,1e-4")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of learning rates") from None


def _adapters(text: str) -> list[str]:
    values = comma_values(text, "lora")
    unknown = [v for v in values if v not in ADAPTERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown adapter {unknown[0]!r}; choose from {', '.join(ADAPTERS)}"
        )
    return values


def _layers(text: str) -> list[int]:
    try:
        return [int(v) for v in comma_values(text, "5,6,7")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of layer numbers") from None


def _grid_axis(text: str) -> tuple[str, list[str]]:
    # The values stay text here: the grid's plan types and checks them, setting by setting.
    return grid_parts(text, "removal=neurons,graddiff")


def add_parser(commands: argparse._SubParsersAction) -> None:
    defaults = {f.name: f.default for f in fields(FactsConfig)}
    facts = commands.add_parser(
        "facts",
        help="does removed knowledge stay removed? facts, held-out relearning (RTT), seeds",
        description="Find the facts the model knows (country -> capital, city -> country), "
        "split the forget relation's into T and V by seed, remove them (neurons ranked at the "
        "recall positions, an eraser, or a weight edit) beside its control, then retrain each arm "
        "(removal, control, no removal) under each protocol and ask V. Writes DIR/seed-S/ "
        "(resumable) and DIR/facts.json (intervals across seeds); with --grid, one such study "
        "per cell in DIR/<cell>/ and their comparison in DIR/comparison.html.",
    )
    add = facts.add_argument
    add("--out", type=Path, required=True, metavar="DIR", help="the study directory")
    add(
        "--preset",
        choices=FACTS_PRESETS,
        metavar="NAME",
        help="the flags of a published table, placed before the flags given with it (which "
        "win): "
        + "; ".join(f"{name}: {' '.join(facts_preset_flags(name))}" for name in FACTS_PRESETS),
    )
    add("--seeds", type=int_list, default=[0], metavar="S,...", help="seeds (default: 0)")
    add("--model", default=defaults["model"], metavar="MODEL", help="a decoder (default: smollm2)")
    add(
        "--forget-relation",
        choices=RELATIONS,
        default=defaults["forget_relation"],
        help="the relation removed; the other is retained (default: capital_of)",
    )
    add(
        "--removal",
        choices=REMOVALS,
        default=defaults["removal"],
        help="neurons (held at zero), an eraser held at every layer (leace, direction), or "
        "a weight edit: gradient difference (graddiff) or RMU (rmu), whose control unlearns "
        "held-out facts, so give --held-out (default: neurons)",
    )
    add(
        "--held-out",
        dest="held_out",
        type=float,
        default=defaults["held_out"],
        metavar="SHARE",
        help="share of the forget relation's known facts set aside from T and V: measured "
        "after each removal, and unlearned by a weight edit's control (default: 0)",
    )
    add(
        "--method",
        choices=FACT_RANKERS,
        default=defaults["method"],
        help="how neurons are ranked, forget against retain (default: ratio)",
    )
    add(
        "--fraction",
        type=float,
        default=defaults["fraction"],
        metavar="FRACTION",
        help="share of all MLP neurons removed (default: 0.02)",
    )
    add(
        "--relearn",
        type=_protocols,
        default=list(DEFAULT_PROTOCOLS),
        metavar="P,...",
        help="protocols: heldout (forget-T facts), unrelated (text with no fact), retain "
        "(the other relation's facts), same (forget-T and V) (default: the first three)",
    )
    add(
        "--steps",
        type=positive_int,
        default=defaults["steps"],
        metavar="STEPS",
        help="retraining steps under each protocol (default: 30)",
    )
    add(
        "--lr",
        dest="learning_rate",
        type=float,
        default=defaults["learning_rate"],
        metavar="RATE",
        help="retraining learning rate (default: 3e-05)",
    )
    add(
        "--best-case-lrs",
        type=_rates,
        default=[],
        metavar="RATE,...",
        help="more retraining learning rates: every arm also retrains at each, and each "
        "seed's best V over all rates is reported, chosen after the fact (default: none)",
    )
    add(
        "--relearn-adapter",
        choices=ADAPTERS,
        default=defaults["relearn_adapter"],
        help="retrain every weight (full) or LoRA adapters only (default: full)",
    )
    add(
        "--lora-rank",
        type=positive_int,
        default=defaults["lora_rank"],
        metavar="RANK",
        help="the LoRA adapters' rank (default: 8)",
    )
    add(
        "--best-case-adapters",
        type=_adapters,
        default=[],
        metavar="TOOL,...",
        help="more retrainer tools for the best case (full, lora), each at every learning "
        "rate (default: none)",
    )
    add(
        "--edit-retain",
        dest="edit_retain",
        choices=("unasked", "all"),
        default=defaults["edit_retain"],
        help="the retain facts a weight edit keeps: those never asked (unasked), so the "
        "retain cost is out of sample, or all (runs made before this setting) "
        "(default: unasked)",
    )
    for name, kind, meaning in (
        ("graddiff_steps", positive_int, "gradient difference's steps"),
        ("graddiff_lr", float, "gradient difference's learning rate"),
        ("graddiff_retain_weight", float, "the weight of gradient difference's retain loss"),
        ("rmu_layer", int, "the layer whose residual RMU steers"),
        ("rmu_updated_layers", _layers, "the layers whose MLPs RMU updates"),
        ("rmu_steering", float, "RMU's steering norm, in mean residual norms at its layer"),
        ("rmu_alpha", float, "the weight of RMU's retain loss"),
        ("rmu_steps", positive_int, "RMU's steps"),
        ("rmu_lr", float, "RMU's learning rate"),
    ):
        default = defaults[name]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        add(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=default,
            metavar=name.split("_")[-1].upper(),
            help=f"{meaning} (default: {shown})",
        )
    add(
        "--batch-size",
        type=positive_int,
        default=defaults["batch_size"],
        metavar="N",
        help="sentences a step (default: 8)",
    )
    add(
        "--unrelated-sentences",
        type=int,
        default=0,
        metavar="N",
        help="retrain unrelated on N seeded sentences, cycled; 0: all of them (default)",
    )
    add(
        "--max-facts",
        type=int,
        default=0,
        metavar="N",
        help="known facts kept per relation, 0: all (default)",
    )
    add(
        "--retain-questions",
        type=positive_int,
        default=defaults["retain_questions"],
        metavar="N",
        help="retain facts asked at each state (default: 100)",
    )
    add(
        "--general-sentences",
        type=positive_int,
        default=defaults["general_sentences"],
        metavar="N",
        help="held-out sentences of the general-ability loss (default: 64)",
    )
    add(
        "--grid",
        type=_grid_axis,
        action="append",
        metavar="KEY=V1,V2",
        help="run a grid of studies, one per combination of values, in DIR/KEY=V1[_KEY2=..]/ "
        "(each the study --out DIR/KEY=V1 would make, so studies run alone are gathered), "
        "seeds outer, one model load, then DIR/comparison.json and comparison.html. KEY is a "
        "setting: a flag's name with underscores (learning_rate for --lr; not --seeds, "
        "--model, --device, --relearn or --best-case-*), its value replacing the flag's; a "
        "layer list as 10+11. Repeat for more axes, e.g. --grid "
        "removal=neurons,leace,direction,graddiff,rmu",
    )
    add("--device", default=defaults["device"], help="cpu, cuda or mps (default: cpu)")
    add("--quiet", action="store_true", help="no progress lines")
    facts.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Every setting with a flag of its own name; the two list flags become tuples.
    given = {f.name: getattr(args, f.name) for f in fields(FactsConfig) if hasattr(args, f.name)}
    given |= {
        "protocols": tuple(args.relearn),
        "best_case_lrs": tuple(args.best_case_lrs),
        "best_case_adapters": tuple(args.best_case_adapters),
        "rmu_updated_layers": tuple(args.rmu_updated_layers),
    }
    config = FactsConfig(**given)  # checked before torch loads

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
