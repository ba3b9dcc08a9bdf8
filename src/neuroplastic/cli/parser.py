"""Every command's parser, built from declarations: the run's settings
(:class:`neuroplastic.config.ExperimentConfig`) and each command's own flags
(:mod:`neuroplastic.cli.options`). Imports nothing heavy: `--help` must answer without torch."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NoReturn, get_args, get_origin, get_type_hints

from neuroplastic.cli import facts_command, inspect_commands, run_commands, sweep_command
from neuroplastic.cli.arguments import choice_list, positive_int, setting_defaults, setting_metadata
from neuroplastic.cli.options import ModelData, NoReport, Quiet, Rank, RunOut, Sweep, SweepOut, View

#: One line per setting for `run` / `sweep --help` (what it does), read off the config; a
#: setting without one gets a help of only its default, which tests/cli/test_help_and_extras.py
#: refuses.
SETTING_HELP = {name: m["help"] for name, m in setting_metadata().items() if m.get("help")}

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
    for build in (_rank_parser, _run_parser, _sweep_parser, _report_parser, _view_parser):
        build(commands)
    facts_command.add_parser(commands)
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
