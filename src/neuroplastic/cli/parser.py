"""Every command's parser, built from declarations: the run's settings
(:class:`neuroplastic.config.ExperimentConfig`), the facts study's
(:class:`neuroplastic.facts_config.FactsConfig`) and each command's own flags
(:mod:`neuroplastic.cli.options`). Imports nothing heavy: `--help` must answer without torch."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NoReturn, get_args, get_origin, get_type_hints

from neuroplastic.cli import facts_command, inspect_commands, run_commands, sweep_command
from neuroplastic.cli.arguments import (
    choice_list,
    grid_parts,
    int_list,
    positive_int,
    setting_defaults,
    setting_metadata,
    value_list,
)
from neuroplastic.cli.options import ModelData, NoReport, Quiet, Rank, RunOut, Sweep, SweepOut, View
from neuroplastic.facts_config import FactsConfig, flag_of
from neuroplastic.presets import FACTS_PRESETS, facts_preset_flags

#: One line per setting for `run` / `sweep --help` (what it does), read off the config; a
#: setting without one gets a help of only its default, which tests/cli/test_help_and_extras.py
#: refuses.
SETTING_HELP = {name: m["help"] for name, m in setting_metadata().items() if m.get("help")}
#: The facts settings' flags in `facts --help`'s order: what is removed, how it is retrained,
#: the weight edits, the sizes (FactsConfig's field order is config.json's). A setting with a
#: flag that is not here is shown after --grid.
FACTS_FLAG_ORDER = (
    "model", "forget_relation", "removal", "held_out", "method", "fraction", "protocols", "steps",
    "learning_rate", "best_case_lrs", "relearn_adapter", "lora_rank", "best_case_adapters",
    "edit_retain", "graddiff_steps", "graddiff_lr", "graddiff_retain_weight", "rmu_layer",
    "rmu_updated_layers", "rmu_steering", "rmu_alpha", "rmu_steps", "rmu_lr", "batch_size",
    "unrelated_sentences", "max_facts", "retain_questions", "general_sentences",
)  # fmt: skip

Subparsers = Any  # argparse's _SubParsersAction, private


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (what was wrong, then where the flags are listed)
    instead of the whole usage block above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag."""
    parser = _Parser(
        prog="neuroplastic",
        description="Remove a concept from a model by ablating its neurons, retrain, and trace "
        "where it comes back.",
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    for build in (
        _rank_parser,
        _run_parser,
        _sweep_parser,
        _report_parser,
        _view_parser,
        _facts_parser,
    ):
        build(commands)
    return parser


def _rank_parser(commands: Subparsers) -> None:
    rank = commands.add_parser(
        "rank",
        help="rank MLP neurons by saliency for a concept",
        description="Stream a dataset split through the model and rank every MLP neuron by its "
        "saliency for the concept; print the top ones with their top activating tokens.",
    )
    add_flags(rank, ModelData, Quiet, Rank)
    rank.set_defaults(handler=inspect_commands.rank)


def _run_parser(commands: Subparsers) -> None:
    run = commands.add_parser(
        "run",
        help="the relearning experiment: fine-tune, ablate, retrain in stages, trace",
        description="Fine-tune for NER, rank neurons for the concept, ablate them, retrain in "
        "stages with the ablation held, and measure recovery; with a random baseline arm. "
        "Rerun the same command to resume.",
    )
    add_flags(run, RunOut)
    config_flags(run)
    add_flags(run, NoReport, Quiet)
    run.set_defaults(handler=run_commands.run)


def _sweep_parser(commands: Subparsers) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="the experiment over seeds (and modes / methods), with intervals across seeds",
        description="One run per (mode, method, seed) under DIR/{mode}-{method}/seed-{s}, each "
        "resumable (finished ones are skipped); then DIR/sweep.json and DIR/report.html with "
        "the mean and 95% interval across seeds of every measure. Takes every flag of `run`. With "
        "--dataset facts it is the facts study's sweep: the other arguments go to `neuroplastic "
        "facts` (e.g. --grid removal=neurons,graddiff,rmu --seeds 0,1,2,3,4).",
    )
    add_flags(sweep, SweepOut)
    config_flags(sweep, lists=sweep_command.CELL_SETTINGS, skip=("seed",))
    add_flags(sweep, Sweep, NoReport, Quiet)
    sweep.set_defaults(handler=sweep_command.sweep)


def _report_parser(commands: Subparsers) -> None:
    report = commands.add_parser(
        "report",
        help="write DIR/report.html for a run directory",
        description="Write the offline HTML report of a run directory (finished or not). "
        "Needs the [report] extra.",
    )
    report.add_argument(
        "run_dir", type=Path, metavar="DIR", help="a directory written by `neuroplastic run`"
    )
    report.add_argument(
        "--similarity",
        default="model",
        choices=("model", "sentence", "none"),
        help="token embeddings for concept similarity: the model's own input "
        "embeddings (default), the offline MiniLM sentence encoder ([embedded]), or none",
    )
    report.set_defaults(handler=run_commands.report)


def _view_parser(commands: Subparsers) -> None:
    view = commands.add_parser(
        "view",
        help="an offline HTML page of chosen neurons' top activating tokens in context",
        description="Find the chosen neurons' top activating tokens in a dataset split and "
        "write one offline HTML page showing them in their sentences (CircuitsVis).",
    )
    add_flags(view, ModelData, Quiet, View)
    view.set_defaults(handler=inspect_commands.view)


def _facts_parser(commands: Subparsers) -> None:
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
    facts_flags(facts, FACTS_FLAG_ORDER)
    add(
        "--grid",
        type=_facts_grid_axis,
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
    rest = [f.name for f in fields(FactsConfig) if f.name not in FACTS_FLAG_ORDER]
    facts_flags(facts, [name for name in rest if flag_of(name)])  # --device
    add("--quiet", action="store_true", help="no progress lines")
    facts.set_defaults(handler=facts_command.run)


def _facts_grid_axis(text: str) -> tuple[str, list[str]]:
    # The values stay text here: the grid's plan types and checks them, setting by setting.
    return grid_parts(text, "removal=neurons,graddiff")


def facts_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """A flag per named FactsConfig setting, in that order, as the setting declares it
    (:func:`neuroplastic.facts_config.facts_setting`): its value's type and choices (a
    ``tuple`` setting's comma-separated), its unit as metavar, its help with its default. Its
    dest is the setting's name and its default the setting's: no flag given, no change."""
    hints, declared = get_type_hints(FactsConfig), {f.name: f for f in fields(FactsConfig)}
    for name in names:
        meta, default = declared[name].metadata, declared[name].default
        if get_origin(hints[name]) is tuple:
            item = get_args(hints[name])[0]
            allowed = get_args(item) if get_origin(item) is Literal else ()
            kind, choices = value_list(item, allowed, meta["item"], meta["example"]), None
        else:
            kind, choices = value_type(hints[name], meta)
        help = meta["help"]
        if "(default" not in help:  # unless the help says its default itself
            shown = (
                (",".join(map(str, default)) or "none") if isinstance(default, tuple) else default
            )
            help = f"{help} (default: {shown})"
        parser.add_argument(
            flag_of(name),
            dest=name,
            type=kind,
            default=default,
            choices=choices,
            metavar=None if choices else meta["unit"],
            help=help,
        )


def value_type(hint: Any, declared: Any) -> tuple[Callable[[str], Any], tuple[str, ...] | None]:
    """What a declared field's flag reads its value with, and its choices: a ``Literal`` type
    names its choices; ``X | None`` reads an ``X``; an ``int`` whose bound leaves out 0 reads a
    positive integer."""
    if get_origin(hint) is Literal:
        return str, get_args(hint)
    if isinstance(hint, UnionType):
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    if hint is int and not declared.get("zero_allowed"):
        return positive_int, None
    return hint, None


def add_flags(parser: argparse.ArgumentParser, *declarations: type) -> None:
    """A flag per field of each class of :mod:`neuroplastic.cli.options`, in order; its
    default is the field's (the command reads it as it is)."""
    for declared in declarations:
        hints = get_type_hints(declared)
        for f in fields(declared):
            flag, meta = "--" + f.name.replace("_", "-"), f.metadata
            if hints[f.name] is bool:
                parser.add_argument(flag, action="store_true", help=meta["help"])
                continue
            kind, choices = value_type(hints[f.name], meta)
            parser.add_argument(
                flag,
                action="append" if meta["repeat"] else "store",
                type=meta["parse"] or kind,
                default=f.default,
                choices=choices,
                required=meta["required"],
                metavar=None if choices else meta["unit"],
                help=meta["help"],
            )


def config_flags(
    parser: argparse.ArgumentParser, lists: Sequence[str] = (), skip: Sequence[str] = ()
) -> None:
    """A flag per ExperimentConfig setting (``--preset`` and ``--config FILE`` first, flags
    override them); ``lists`` settings take comma-separated values; ``skip`` settings get no
    flag. Every default is None: a flag not given leaves the preset's or the file's value."""
    from neuroplastic.config import OPTIONAL_CHOICES, ExperimentConfig  # light: no torch

    _settings_source_flags(parser)
    hints, metadata = get_type_hints(ExperimentConfig), setting_metadata()
    for name, value in setting_defaults().items():
        if name in skip:
            continue
        flag, declared = "--" + name.replace("_", "-"), metadata[name]
        what = SETTING_HELP.get(name, "")
        kind, choices = value_type(hints[name], declared)
        choices = choices or OPTIONAL_CHOICES.get(name)
        if name in lists:
            parser.add_argument(
                flag,
                type=choice_list(choices),
                default=None,
                metavar=f"{{{','.join(choices)}}}[,...]",
                help=f"{what}; comma-separated, one cell each (default: {value})",
            )
        elif kind is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{what} (default: {value})",
            )
        else:
            parser.add_argument(
                flag,
                type=kind,
                default=None,
                choices=choices,
                metavar=None if choices else declared.get("unit"),
                help=f"{what} (default: {value})" if value is not None else what,
            )
    parser.add_argument(
        "--lr",
        dest="learning_rate",
        type=float,
        default=None,
        metavar="RATE",
        help="alias of --learning-rate",
    )


def _settings_source_flags(parser: argparse.ArgumentParser) -> None:
    from neuroplastic.presets import PRESETS  # light: no torch

    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="named settings: 'paper' is Lo et al.'s recipe (DistilGPT2 on CoNLL-2003, "
        "probeless 50%%, epochs, lr 2e-5, batch 8); --config and flags override it",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON file of settings (the flags' names with _); flags override it",
    )
