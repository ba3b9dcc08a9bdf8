"""``neuroplastic`` command line: rank, run, sweep, report, view.

Every user-facing failure is a ``NeuroplasticError``, printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from neuroplastic.config import RANKER_NAMES  # light: building the parser never imports torch

#: the most runs a sweep makes without ``--max-runs`` saying more (a typo in a --grid can ask
#: for thousands)
MAX_RUNS = 100

#: the keys of ``rank --json``'s file (:meth:`neuroplastic.api.RankResult.to_json`)
RANK_JSON_KEYS = frozenset({"model", "concept", "method", "n_layers", "d_mlp", "neurons"})


def _setting_metadata() -> dict[str, Any]:
    """Each ExperimentConfig setting's ``help``, ``unit`` and ``zero_allowed``, as the config
    declares them (:func:`neuroplastic.config.setting`): the one description of a setting."""
    from dataclasses import fields

    from neuroplastic.config import ExperimentConfig  # light: no torch

    return {f.name: f.metadata for f in fields(ExperimentConfig)}


#: One line per setting for `run` / `sweep --help` (what it does), read off the config; a
#: setting without one gets a help of only its default, which tests/cli/test_help_and_extras.py
#: refuses.
SETTING_HELP = {name: m["help"] for name, m in _setting_metadata().items() if m.get("help")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = _attach_dash_values(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)  # --help answers and exits here, before anything heavy
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from neuroplastic.errors import NeuroplasticError
    from neuroplastic.progress import quiet

    try:
        with quiet(getattr(args, "quiet", False)), _terminate_as_interrupt():
            return int(args.handler(args) or 0)
    except _Terminated:
        print(
            f"neuroplastic {args.command}: terminated; rerun the same command to resume",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM
    except NeuroplasticError as error:
        print(f"neuroplastic {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file system refusal no check foresaw (full disk, permissions)
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"neuroplastic {args.command}: error: {error.strerror or error}{where}; completed "
            "results are kept: fix it and rerun the same command",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"neuroplastic {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


def _attach_dash_values(argv: list[str]) -> list[str]:
    """``--flag -1:3`` as ``--flag=-1:3``: argparse reads a value that starts with a dash as a
    flag unless it is a plain negative number, so ``--neurons -1:3`` or ``--grid -...`` got
    "expected one argument" where ``--flag=VALUE`` reached the setting's own check. No flag
    starts with a dash and a digit, so such a token is always the value of the flag before."""
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if (
            previous.startswith("--")
            and len(previous) > 2  # not the end of the flags
            and "=" not in previous
            and len(token) > 1
            and token[0] == "-"
            and (token[1].isdigit() or token[1] == ".")
        ):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


class _Terminated(BaseException):
    """SIGTERM (a scheduler's pre-emption, `kill`) raised where the command is, so that it
    unwinds as an interrupt does: locks released, the stages written so far kept."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread (a handler can only be set there): leave it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (what was wrong, then where the flags are listed)
    instead of the whole usage block above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    """Every command and flag. Imports nothing heavy: `--help` must answer without torch."""
    parser = _Parser(
        prog="neuroplastic",
        description="Remove a concept from a model by ablating its neurons, retrain, and trace "
        "where it comes back.",
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    rank = commands.add_parser(
        "rank",
        help="rank MLP neurons by saliency for a concept",
        description="Stream a dataset split through the model and rank every MLP neuron by its "
        "saliency for the concept; print the top ones with their top activating tokens.",
    )
    _model_data_args(rank)
    rank.add_argument(
        "--concept",
        default="LOC",
        metavar="LABEL",
        help="entity label to rank neurons for (default: LOC)",
    )
    rank.add_argument(
        "--method",
        default="probeless",
        choices=RANKER_NAMES,
        help="ranking method (default: probeless, the paper's)",
    )
    rank.add_argument(
        "--top",
        type=positive_int,
        default=20,
        metavar="NEURONS",
        help="neurons to print, most salient first (default: 20)",
    )
    rank.add_argument(
        "--top-k-tokens",
        type=positive_int,
        default=10,
        metavar="TOKENS",
        help="top activating tokens kept per neuron (default: 10)",
    )
    rank.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write every neuron's rank, saliency and top tokens to this JSON file",
    )
    rank.set_defaults(handler=_rank)

    run = commands.add_parser(
        "run",
        help="the relearning experiment: fine-tune, ablate, retrain in stages, trace",
        description="Fine-tune for NER, rank neurons for the concept, ablate them, retrain in "
        "stages with the ablation held, and measure recovery; with a random baseline arm. "
        "Rerun the same command to resume.",
    )
    run.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="run directory (created; rerun to resume)",
    )
    _config_args(run)
    run.add_argument(
        "--no-report",
        action="store_true",
        help="skip writing report.html (no [report] extra needed)",
    )
    _quiet_arg(run)
    run.set_defaults(handler=_run)

    sweep = commands.add_parser(
        "sweep",
        help="the experiment over seeds (and modes / methods), with intervals across seeds",
        description="One run per (mode, method, seed) under DIR/{mode}-{method}/seed-{s}, each "
        "resumable (finished ones are skipped); then DIR/sweep.json and DIR/report.html with "
        "the mean and 95% interval across seeds of every measure. Takes every flag of `run`.",
    )
    sweep.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="sweep directory (created; rerun to resume)",
    )
    sweep.add_argument(
        "--seeds",
        type=_int_list,
        required=True,
        metavar="S[,S...]",
        help="comma-separated distinct seeds, one run each, e.g. 0,1,2",
    )
    _config_args(sweep, lists=("mode", "method"), skip=("seed",))
    sweep.add_argument(
        "--grid",
        type=_grid_axis,
        action="append",
        default=None,
        metavar="SETTING=V1,V2[,...]",
        help="one axis of a grid of runs over any run setting, e.g. relearn_lr=1e-5,1e-4,1e-3; "
        "repeat for more axes (every combination runs, for every seed); a value of several "
        "layers joins them with +, e.g. removal_layers=0+1,2; sweep.json gives each "
        "axis's best case for recovery chosen per seed",
    )
    sweep.add_argument(
        "--max-runs",
        type=positive_int,
        default=MAX_RUNS,
        metavar="RUNS",
        help=f"refuse a sweep of more runs than this before any starts (default: {MAX_RUNS}); "
        "raise it to run a larger grid",
    )
    sweep.add_argument(
        "--only-finished",
        action="store_true",
        help="run nothing: aggregate the runs already finished (a sweep still running or cut "
        "short) into sweep.json, which then lists each cell's missing seeds under incomplete",
    )
    sweep.add_argument(
        "--executor",
        choices=("serial", "ray"),
        default="serial",
        help="serial: one run after another in this process (default); ray: every run a Ray "
        "task, in parallel on a local Ray instance or a cluster (the [cluster] extra; run "
        "directories on a file system every worker sees)",
    )
    sweep.add_argument(
        "--ray-address",
        default=None,
        metavar="auto|HOST:PORT",
        help="with --executor ray: the cluster to join (auto: the one `ray start` made on "
        "this machine; default: a local instance of this machine's CPUs and GPUs)",
    )
    sweep.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        metavar="CPUS",
        help="with --executor ray: CPUs each run asks for (torch uses as many threads)",
    )
    sweep.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="GPUS",
        help="with --executor ray: GPUs each run asks for, e.g. 1 with --device cuda "
        "(Ray gives each task its own)",
    )
    sweep.add_argument(
        "--no-report",
        action="store_true",
        help="skip writing report.html (no [report] extra needed)",
    )
    _quiet_arg(sweep)
    sweep.set_defaults(handler=_sweep)

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
    report.set_defaults(handler=_report)

    view = commands.add_parser(
        "view",
        help="an offline HTML page of chosen neurons' top activating tokens in context",
        description="Find the chosen neurons' top activating tokens in a dataset split and "
        "write one offline HTML page showing them in their sentences (CircuitsVis).",
    )
    _model_data_args(view)
    view.add_argument(
        "--neurons",
        required=True,
        metavar="LAYER:NEURON[,...]",
        help="the neurons to show, e.g. 3:120,5:7 (layer and neuron indices from 0)",
    )
    view.add_argument(
        "--top-k",
        type=positive_int,
        default=10,
        metavar="TOKENS",
        help="top activating tokens found per neuron (default: 10)",
    )
    view.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the HTML file to write"
    )
    view.set_defaults(handler=_view)
    return parser


def _quiet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars and no per-stage lines on stderr (errors still show)",
    )


def _config_args(
    parser: argparse.ArgumentParser, lists: Sequence[str] = (), skip: Sequence[str] = ()
) -> None:
    """A flag per ExperimentConfig setting (``--config FILE`` first, flags override it);
    ``lists`` settings take comma-separated values; ``skip`` settings get no flag."""
    from neuroplastic.config import CHOICES, OPTIONAL_CHOICES  # light: no torch
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
    metadata = _setting_metadata()
    for name, value in _setting_defaults().items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        choices = (
            RANKER_NAMES if name == "method" else CHOICES.get(name, OPTIONAL_CHOICES.get(name))
        )
        what = SETTING_HELP.get(name, "")
        declared = metadata.get(name, {})
        if name in lists:
            parser.add_argument(
                flag,
                type=_choice_list(choices),
                default=None,
                metavar=f"{{{','.join(choices)}}}[,...]",
                help=f"{what}; comma-separated, one cell each (default: {value})",
            )
            continue
        if isinstance(value, bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{what} (default: {value})",
            )
            continue
        kind = type(value) if value is not None else str
        if kind is int and not declared.get("zero_allowed"):
            kind = positive_int
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


def _setting_defaults() -> dict:
    """ExperimentConfig's defaults read off its fields: building one validates the method
    against neuroplastic.core.ranking, which imports torch."""
    from dataclasses import MISSING, fields

    from neuroplastic.config import ExperimentConfig

    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()
        for f in fields(ExperimentConfig)
    }


def _comma_values(text: str, example: str, given: str | None = None) -> list[str]:
    """The comma-separated values of ``text`` (part of the argument ``given``), stripped; an
    empty one (``a,,b``, a trailing comma) is refused, never dropped: a value left out changes
    what runs."""
    parts = [part.strip() for part in text.split(",")]
    if any(not part for part in parts):
        where = next(i for i, part in enumerate(parts) if not part) + 1
        raise argparse.ArgumentTypeError(
            f"{given or text!r}: value {where} of {len(parts)} is empty; give every value between "
            f"commas, e.g. {example}"
        )
    return parts


def _int_list(text: str) -> list[int]:
    parts = _comma_values(text, "0,1,2")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None


def _grid_axis(text: str) -> tuple[str, list[Any]]:
    """``SETTING=V1,V2``: the setting (dashes or underscores) and its values, typed as the
    setting is (``none`` for a setting that may be unset)."""
    name, equals, values = text.partition("=")
    key = name.strip().removeprefix("--").replace("-", "_")
    defaults = _setting_defaults()
    if not equals or key not in defaults:
        known = ", ".join(sorted(defaults))
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SETTING=V1,V2 with SETTING one of {known}"
            if equals
            else f"{text!r}: give SETTING=V1,V2 (e.g. relearn_lr=1e-5,1e-4)"
        )
    default = defaults[key]
    if not values.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: no values after '='")
    parts = _comma_values(values, f"{key}=V1,V2", given=text)

    def typed(part: str) -> Any:
        if default is None:
            return None if part.lower() == "none" else part
        if isinstance(default, bool):
            if part.lower() not in ("true", "false"):
                raise argparse.ArgumentTypeError(f"{text!r}: {key} takes true or false")
            return part.lower() == "true"
        try:
            return type(default)(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {part!r} is not a {type(default).__name__} ({key})"
            ) from None

    return key, [typed(part) for part in parts]


def _choice_list(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        values = _comma_values(text, ",".join(allowed[:2]))
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(allowed)} (comma-separated)"
            )
        twice = next((v for v in values if values.count(v) > 1), None)
        if twice is not None:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {twice} is given twice; give each value once (one cell each)"
            )
        return values

    return parse


def _check_file_target(path: Path, flag: str, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse a directory, and an existing file that ``ours`` does not recognise as this
    command's own output (``what``): a dataset, a run's results or someone's notes would be
    lost. A file the command wrote before is replaced, as a rerun expects."""
    from neuroplastic.errors import NeuroplasticError

    if path.is_dir():
        raise NeuroplasticError(f"{flag} {path} is a directory; give a file path")
    if path.exists():
        try:
            recognised = ours(path)
        except (OSError, ValueError):
            recognised = False
        if not recognised:
            raise NeuroplasticError(
                f"{flag} {path} exists and is not {what}: not overwritten; give a new path, or "
                "move that file away first"
            )


def _is_rank_json(path: Path) -> bool:
    with open(path, encoding="utf-8") as file:
        written = json.load(file)
    return isinstance(written, dict) and RANK_JSON_KEYS <= set(written)


def _is_view_page(path: Path) -> bool:
    from neuroplastic.report.html import VIEW_GENERATOR, generated_by

    return generated_by(path, VIEW_GENERATOR)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="embedded",
        help="embedded (offline MiniLM, default; needs [embedded]), smollm2 (offline "
        "SmolLM2-135M-Instruct, Q4_1 weights de-quantised, not the hub's; needs [llm]), "
        "tiny-gpt2, tiny-bert, tiny-llama, a local directory or a Hugging Face name",
    )
    parser.add_argument(
        "--dataset",
        default="embedded",
        help="embedded (synthetic offline NER corpus, default; needs [embedded]), a CoNLL file "
        "or directory, or a Hugging Face dataset name",
    )
    parser.add_argument(
        "--split",
        default="validation",
        choices=("train", "validation"),
        help="dataset split to read (default: validation)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        metavar="SENTENCES",
        help="use at most N sentences of the split (default: all)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        metavar="SENTENCES",
        help="sentences per forward pass (default: 32)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="where to compute: cpu, cuda, cuda:N or mps (default: cpu)",
    )
    _quiet_arg(parser)


def _config(args: argparse.Namespace, lists: Sequence[str] = ()):
    from neuroplastic.config import ExperimentConfig
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


def _sweep(args: argparse.Namespace) -> int:
    from neuroplastic.errors import NeuroplasticError
    from neuroplastic.experiment.sweep_plan import plan_sweep  # light: no torch

    config = _config(args, lists=("mode", "method"))
    if not args.no_report:
        _check_report_extra()
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
        drop = data["arms"]["concept"]["drop_at_pruning"]
        print(f"  {cell}: {config.concept} F1 drop at pruning {_mean_ci(drop)} across seeds")
        for entry in data.get("chase", {}).get("per_round", []):
            arms = entry["arms"]
            print(
                f"    round {entry['round']}: {config.concept} F1 after retraining, concept arm "
                f"{_mean_ci(arms['concept']['retrained'])}"
                + (
                    f", random arm {_mean_ci(arms['random']['retrained'])}"
                    if "random" in arms
                    else ""
                )
            )
        if "preempt" in data:
            difference = data["preempt"]["preempt_minus_control"]
            print(
                f"    pre-empting by {data['preempt']['predictor']} minus its control: steps to "
                f"90% {_mean_ci(difference['steps_to_recover_90'])}, recovery AUC "
                f"{_mean_ci(difference['recovery_auc'])}"
            )
    if not args.no_report:
        from neuroplastic.report.sweep_report import write_sweep_report

        print(f"report: {write_sweep_report(args.out)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = _config(args)  # settings first: torch takes seconds to import on a loaded machine
    if not args.no_report:
        _check_report_extra()
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
        _write_report(args.out)
    return 0


def _check_report_extra() -> None:
    """Before the run, not after it: report.html's plots need the [report] extra."""
    from neuroplastic.extras import require

    require("plotly", "report.html (skip it with --no-report)")


def _write_report(out: Path, similarity: str = "model", command: str = "run") -> None:
    """Write the report; say on stderr what it cannot show (an unfinished run, a stage whose
    files were deleted). A partial report is still a report: exit status 0."""
    from neuroplastic.report.run_report import run_warnings, write_report
    from neuroplastic.store.rundir import RunDir

    path = write_report(out, similarity=similarity)
    print(f"report: {path}")
    for warning in run_warnings(RunDir(out)):
        print(f"neuroplastic {command}: warning: {warning}", file=sys.stderr)


def _report(args: argparse.Namespace) -> int:
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
    _write_report(args.run_dir, args.similarity, command="report")
    return 0


def _view(args: argparse.Namespace) -> int:
    from neuroplastic.core.models import check_mlp_hooks, load_model
    from neuroplastic.core.neurons import NeuronSet
    from neuroplastic.data.load import encode_split, load_corpus
    from neuroplastic.report.views import write_neuron_view_page

    _check_file_target(args.out, "--out", _is_view_page, "a page `neuroplastic view` wrote")
    model = load_model(args.model, device=args.device)
    n_layers, d_mlp = check_mlp_hooks(model)
    neurons = NeuronSet.parse(args.neurons, n_layers, d_mlp)
    data = encode_split(load_corpus(args.dataset), model.tokenizer, args.split, limit=args.limit)
    path = write_neuron_view_page(
        model,
        data,
        neurons,
        args.out,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=not args.quiet,
        title=f"{args.model}: neurons {args.neurons}",
    )
    print(f"wrote {path}")
    return 0


def _rank(args: argparse.Namespace) -> int:
    from neuroplastic.api import rank_neurons
    from neuroplastic.io import atomic_write_json

    if args.json:
        # before the work, not after it
        _check_file_target(
            args.json, "--json", _is_rank_json, "a ranking `neuroplastic rank` wrote"
        )
    result = rank_neurons(
        model=args.model,
        dataset=args.dataset,
        concept=args.concept,
        method=args.method,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        top_k_tokens=args.top_k_tokens,
        device=args.device,
        progress=not args.quiet,
    )
    print(
        f"{args.method} saliency for {args.concept} in {args.model} "
        f"({result.n_layers} layers x {result.d_mlp} neurons)"
    )
    print(f"{'rank':>5} {'layer':>5} {'neuron':>6} {'saliency':>9}  top tokens")
    for row in result.rows[: args.top]:
        if row["rank"] is None:
            print("(the other neurons never fired on these sentences: no rank)")
            break
        tokens = " ".join(repr(t) for t in row["top_tokens"][:8])
        print(
            f"{row['rank']:>5g} {row['layer']:>5} {row['neuron']:>6} {row['saliency']:>9.5f}  "
            f"{tokens}"
        )
    if args.json:
        atomic_write_json(args.json, result.to_json())
        print(f"wrote {len(result.rows)} neurons to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
