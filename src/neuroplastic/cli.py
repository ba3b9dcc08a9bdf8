"""``neuroplastic`` command line: rank, run, sweep, report, view.

Every user-facing failure is a ``NeuroplasticError``, printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from neuroplastic.errors import NeuroplasticError

    try:
        return int(args.handler(args) or 0)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroplastic",
        description="Remove a concept from a model by ablating its neurons, retrain, and trace "
        "where it comes back.",
    )
    commands = parser.add_subparsers(dest="command")

    rank = commands.add_parser("rank", help="rank MLP neurons by saliency for a concept")
    _model_data_args(rank)
    rank.add_argument("--concept", default="LOC", help="concept label (default: LOC)")
    rank.add_argument(
        "--method",
        default="probeless",
        choices=_rankers(),
        help="ranking method (default: probeless, the paper's)",
    )
    rank.add_argument("--top", type=positive_int, default=20, help="neurons to print (default: 20)")
    rank.add_argument(
        "--top-k-tokens",
        type=positive_int,
        default=10,
        help="top activating tokens kept per neuron (default: 10)",
    )
    rank.add_argument("--json", type=Path, help="write every neuron's ranking to this file")
    rank.set_defaults(handler=_rank)

    run = commands.add_parser(
        "run",
        help="the relearning experiment: fine-tune, ablate, retrain in stages, trace",
        description="Fine-tune for NER, rank neurons for the concept, ablate them, retrain in "
        "stages with the ablation held, and measure recovery; with a random baseline arm. "
        "Rerun the same command to resume.",
    )
    run.add_argument("--out", type=Path, required=True, help="run directory")
    _config_args(run)
    run.add_argument("--no-report", action="store_true", help="skip writing report.html")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)

    sweep = commands.add_parser(
        "sweep",
        help="the experiment over seeds (and modes / methods), with intervals across seeds",
        description="One run per (mode, method, seed) under DIR/{mode}-{method}/seed-{s}, each "
        "resumable (finished ones are skipped); then DIR/sweep.json and DIR/report.html with "
        "the mean and 95% interval across seeds of every measure. Takes every flag of `run`.",
    )
    sweep.add_argument("--out", type=Path, required=True, help="sweep directory")
    sweep.add_argument(
        "--seeds", type=_int_list, required=True, help="comma-separated seeds, e.g. 0,1,2"
    )
    _config_args(sweep, lists=("mode", "method"), skip=("seed",))
    sweep.add_argument("--no-report", action="store_true", help="skip writing report.html")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(handler=_sweep)

    report = commands.add_parser("report", help="write DIR/report.html for a run directory")
    report.add_argument("run_dir", type=Path, help="a directory written by `neuroplastic run`")
    report.add_argument(
        "--similarity",
        default="model",
        choices=("model", "sentence", "none"),
        help="token embeddings for concept similarity: the model's own input "
        "embeddings (default), the offline MiniLM sentence encoder, or none",
    )
    report.set_defaults(handler=_report)

    view = commands.add_parser(
        "view", help="an offline HTML page of chosen neurons' top activating tokens in context"
    )
    _model_data_args(view)
    view.add_argument("--neurons", required=True, help="LAYER:NEURON[,LAYER:NEURON...]")
    view.add_argument(
        "--top-k", type=positive_int, default=10, help="top tokens per neuron (default 10)"
    )
    view.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    view.set_defaults(handler=_view)
    return parser


def _config_args(
    parser: argparse.ArgumentParser, lists: Sequence[str] = (), skip: Sequence[str] = ()
) -> None:
    """A flag per ExperimentConfig setting (``--config FILE`` first, flags override it);
    ``lists`` settings take comma-separated values; ``skip`` settings get no flag."""
    from neuroplastic.config import CHOICES, ExperimentConfig

    parser.add_argument("--config", type=Path, help="JSON config file; flags override it")
    for name, value in ExperimentConfig().to_dict().items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if name in lists:
            allowed = CHOICES.get(name) or _rankers()
            parser.add_argument(
                flag,
                type=_choice_list(allowed),
                default=None,
                help=f"comma-separated, from {{{','.join(allowed)}}} (default: {value})",
            )
            continue
        if isinstance(value, bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(default: {value})",
            )
            continue
        kind = type(value) if value is not None else str
        if kind is int and name not in ("seed", "eval_every", "base_steps", "plateau_every"):
            kind = positive_int
        choices = CHOICES.get(name)
        if name == "method":
            choices = _rankers()
        parser.add_argument(
            flag, type=kind, default=None, choices=choices, help=f"(default: {value})"
        )
    parser.add_argument(
        "--lr", dest="learning_rate", type=float, default=None, help="alias of --learning-rate"
    )


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None


def _choice_list(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(allowed)} (comma-separated)"
            )
        return values

    return parse


def _check_file_target(path: Path, flag: str) -> None:
    from neuroplastic.errors import NeuroplasticError

    if path.is_dir():
        raise NeuroplasticError(f"{flag} {path} is a directory; give a file path")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _rankers() -> list[str]:
    from neuroplastic.ranking import RANKERS

    return list(RANKERS)


def _model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="embedded",
        help="embedded (offline MiniLM, default), tiny-gpt2, tiny-bert, a local "
        "directory or a Hugging Face name",
    )
    parser.add_argument(
        "--dataset",
        default="embedded",
        help="embedded (synthetic offline NER corpus, default), a CoNLL file or "
        "directory, or a Hugging Face dataset name",
    )
    parser.add_argument("--split", default="validation", choices=("train", "validation"))
    parser.add_argument("--limit", type=positive_int, default=None, help="use at most N sentences")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace, lists: Sequence[str] = ()):
    from neuroplastic.config import ExperimentConfig

    settings = ExperimentConfig.load(args.config).to_dict() if args.config else {}
    for name in ExperimentConfig().to_dict():
        value = getattr(args, name, None)
        if value is not None and name not in lists:
            settings[name] = value
    # Giving a count or a fraction alone says which selection is meant.
    if args.selection is None and (args.count is None) != (args.fraction is None):
        settings["selection"] = "count" if args.count is not None else "fraction"
    return ExperimentConfig.from_dict(settings)


def _sweep(args: argparse.Namespace) -> int:
    from neuroplastic.sweep import run_sweep

    config = _config(args, lists=("mode", "method"))
    result = run_sweep(
        config,
        args.out,
        seeds=args.seeds,
        modes=args.mode,
        methods=args.method,
        progress=not args.quiet,
    )
    print(f"sweep: {args.out / 'sweep.json'}")
    for cell, data in result["cells"].items():
        drop = data["arms"]["concept"]["drop_at_pruning"]
        print(f"  {cell}: {config.concept} F1 drop at pruning {_mean_ci(drop)} across seeds")
    if not args.no_report:
        from neuroplastic.sweep_report import write_sweep_report

        print(f"report: {write_sweep_report(args.out)}")
    return 0


def _mean_ci(value: dict) -> str:
    if value["mean"] is None:
        return "n/a"
    if value["ci_low"] is None:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"


def _run(args: argparse.Namespace) -> int:
    from neuroplastic.experiment import run_experiment

    config = _config(args)
    summary = run_experiment(config, args.out, progress=not args.quiet)
    print(f"summary: {args.out / 'summary.json'}")
    for arm, result in summary["arms"].items():
        first, last = result["stages"][1], result["stages"][-1]
        key = "f1" if "f1" in last else "lm_loss"
        concept = config.concept if key == "f1" else "concept"
        print(
            f"  {arm:<8} {result['neurons']} neurons: {config.concept} {key} "
            f"{first[key][concept]:.3f} after pruning -> {last[key][concept]:.3f} after "
            f"{last['step']} retraining steps"
        )
    if not args.no_report:
        _write_report(args.out)
    return 0


def _write_report(out: Path, similarity: str = "model", command: str = "run") -> None:
    """Write the report; say on stderr what it cannot show (an unfinished run, a stage whose
    files were deleted). A partial report is still a report: exit status 0."""
    from neuroplastic.report import run_warnings, write_report
    from neuroplastic.rundir import RunDir

    path = write_report(out, similarity=similarity)
    print(f"report: {path}")
    for warning in run_warnings(RunDir(out)):
        print(f"neuroplastic {command}: warning: {warning}", file=sys.stderr)


def _report(args: argparse.Namespace) -> int:
    from neuroplastic.errors import NeuroplasticError

    if not args.run_dir.is_dir() or not (args.run_dir / "config.json").is_file():
        raise NeuroplasticError(
            f"{args.run_dir} is not a run directory (no config.json); make one with "
            "`neuroplastic run --out DIR`"
        )
    _write_report(args.run_dir, args.similarity, command="report")
    return 0


def _view(args: argparse.Namespace) -> int:
    from neuroplastic.data.load import encode_split, load_corpus
    from neuroplastic.models import check_mlp_hooks, load_model
    from neuroplastic.neurons import NeuronSet
    from neuroplastic.views import write_neuron_view_page

    _check_file_target(args.out, "--out")
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
        _check_file_target(args.json, "--json")  # before the work, not after it
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
