"""Each command's own flags, declared once as settings, as ExperimentConfig declares the run's
(:func:`neuroplastic.config.setting`): the field's name is the flag (``top_k_tokens`` is
``--top-k-tokens``), its type the value's (a ``Literal`` gives the choices, ``bool`` a switch,
an ``int`` a positive integer), its unit the metavar, and its help the line `--help` shows,
where ``%(default)s`` reads the declared default.
:func:`neuroplastic.cli.parser.add_flags` turns a class of them into flags. Light: no torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from neuroplastic.cli.arguments import grid_axis, int_list
from neuroplastic.config import RANK_METHOD, RANKER_NAMES, RUN_METHOD, setting

#: the most runs a sweep makes without ``--max-runs`` saying more (a typo in a --grid can ask
#: for thousands)
MAX_RUNS = 100


def flag(
    default: Any = None,
    help: str = "",
    unit: str | None = None,
    *,
    parse: Callable[[str], Any] | None = None,
    required: bool = False,
    repeat: bool = False,
) -> Any:
    """:func:`neuroplastic.config.setting` with what only a command line has: ``parse`` (the
    value's parser, where its type is not one), ``required``, and ``repeat`` (each use of the
    flag adds one value to a list)."""
    declared = setting(default, help=help, unit=unit)
    extra = {"parse": parse, "required": required, "repeat": repeat}
    return field(default=default, metadata={**declared.metadata, **extra})


@dataclass
class Quiet:
    quiet: bool = flag(
        False, "no progress bars and no per-stage lines on stderr (errors still show)"
    )


@dataclass
class NoReport:
    no_report: bool = flag(False, "skip writing report.html (no [report] extra needed)")


@dataclass
class ModelData:
    """The model and the sentences `rank` and `view` read."""

    model: str = flag(
        "embedded",
        "embedded (offline MiniLM, default; needs [embedded]), smollm2 (offline "
        "SmolLM2-135M-Instruct, Q4_1 weights de-quantised, not the hub's; needs [llm]), "
        "tiny-gpt2, tiny-bert, tiny-llama, a local directory or a Hugging Face name",
        "MODEL",
    )
    dataset: str = flag(
        "embedded",
        "embedded (synthetic offline NER corpus, default; needs [embedded]), a CoNLL file or "
        "directory, or a Hugging Face dataset name",
        "DATASET",
    )
    split: Literal["train", "validation"] = flag(
        "validation", "dataset split to read (default: %(default)s)"
    )
    limit: int | None = flag(
        None, "use at most N sentences of the split (default: all)", "SENTENCES"
    )
    batch_size: int = flag(32, "sentences per forward pass (default: %(default)s)", "SENTENCES")
    device: str = flag(
        "cpu", "where to compute: cpu, cuda, cuda:N or mps (default: %(default)s)", "DEVICE"
    )


@dataclass
class Rank:
    concept: str = flag("LOC", "entity label to rank neurons for (default: %(default)s)", "LABEL")
    method: Literal[RANKER_NAMES] = flag(
        RANK_METHOD,
        "ranking method (default: %(default)s, the paper's; `neuroplastic run` defaults to "
        f"{RUN_METHOD}, which puts the concept's own neurons first where %(default)s puts "
        "those of every entity type)",
    )
    top: int = flag(20, "neurons to print, most salient first (default: %(default)s)", "NEURONS")
    top_k_tokens: int = flag(
        10, "top activating tokens kept per neuron (default: %(default)s)", "TOKENS"
    )
    json: Path | None = flag(
        None,
        "also write every neuron's rank, saliency and top tokens to this JSON file",
        "FILE",
    )


@dataclass
class View:
    neurons: str = flag(
        None,
        "the neurons to show, e.g. 3:120,5:7 (layer and neuron indices from 0)",
        "LAYER:NEURON[,...]",
        required=True,
    )
    top_k: int = flag(10, "top activating tokens found per neuron (default: %(default)s)", "TOKENS")
    out: Path = flag(None, "the HTML file to write", "FILE", required=True)


@dataclass
class RunOut:
    out: Path = flag(None, "run directory (created; rerun to resume)", "DIR", required=True)


@dataclass
class SweepOut:
    out: Path = flag(None, "sweep directory (created; rerun to resume)", "DIR", required=True)
    seeds: list[int] = flag(
        None,
        "comma-separated distinct seeds, one run each, e.g. 0,1,2",
        "S[,S...]",
        parse=int_list,
        required=True,
    )


@dataclass
class Sweep:
    """A sweep's own flags, after the run's settings."""

    grid: list[tuple[str, list[Any]]] | None = flag(
        None,
        "one axis of a grid of runs over any run setting, e.g. relearn_lr=1e-5,1e-4,1e-3; "
        "repeat for more axes (every combination runs, for every seed); a value of several "
        "layers joins them with +, e.g. removal_layers=0+1,2; sweep.json gives each axis's "
        "best case for recovery chosen per seed",
        "SETTING=V1,V2[,...]",
        parse=grid_axis,
        repeat=True,
    )
    max_runs: int = flag(
        MAX_RUNS,
        "refuse a sweep of more runs than this before any starts (default: %(default)s); raise "
        "it to run a larger grid",
        "RUNS",
    )
    only_finished: bool = flag(
        False,
        "run nothing: aggregate the runs already finished (a sweep still running or cut short) "
        "into sweep.json, which then lists each cell's missing seeds under incomplete",
    )
    executor: Literal["serial", "ray"] = flag(
        "serial",
        "serial: one run after another in this process (default); ray: every run a Ray task, in "
        "parallel on a local Ray instance or a cluster (the [cluster] extra; run directories on "
        "a file system every worker sees)",
    )
    ray_address: str | None = flag(
        None,
        "with --executor ray: the cluster to join (auto: the one `ray start` made on this "
        "machine; default: a local instance of this machine's CPUs and GPUs)",
        "auto|HOST:PORT",
    )
    cpus_per_run: float = flag(
        1.0, "with --executor ray: CPUs each run asks for (torch uses as many threads)", "CPUS"
    )
    gpus_per_run: float = flag(
        0.0,
        "with --executor ray: GPUs each run asks for, e.g. 1 with --device cuda (Ray gives each "
        "task its own)",
        "GPUS",
    )
