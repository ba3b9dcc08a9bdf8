"""The refusals a run makes before any work: settings the processes, the model or ``--out``
cannot honour, and data that changed since the run began."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from neuroplastic import distributed
from neuroplastic.config import ExperimentConfig
from neuroplastic.core.training import check_batch_split
from neuroplastic.data.fingerprint import changed_splits, fingerprint
from neuroplastic.data.types import NerSentence
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.manifest import CorruptFile
from neuroplastic.store.rundir import RunDir, directory_kind


def _warn(message: str) -> None:
    print(f"neuroplastic: warning: {message}", file=sys.stderr, flush=True)


def _check_out(out: Path) -> None:
    """Refuse at once an ``--out`` that is a file, a sweep's directory or a directory that
    cannot be written."""
    if out.exists() and not out.is_dir():
        raise NeuroplasticError(
            f"--out {out} is an existing file, not a directory; give a directory path "
            "(a new one is created)"
        )
    if directory_kind(out) == "sweep":
        raise NeuroplasticError(
            f"--out {out} is a sweep directory (made by `neuroplastic sweep`), not a run's; "
            "give a new directory for this run, or rerun the sweep command to resume the sweep"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NeuroplasticError(
            f"--out {out}: cannot create the run directory ({error.strerror}); give a path "
            "in a directory you can write to"
        ) from error
    if not os.access(out, os.W_OK | os.X_OK):
        raise NeuroplasticError(
            f"--out {out}: the directory is not writable; give a directory you can write to "
            "or change its permissions"
        )


def _check_processes(config: ExperimentConfig) -> None:
    """Settings that several processes cannot honour, refused on every rank alike."""
    ranks = distributed.world_size()
    if ranks == 1:
        return
    if config.device_map:
        raise NeuroplasticError(
            f"--device-map {config.device_map} spreads one model over the GPUs, but {ranks} "
            "processes were launched (one model each): run one process for --device-map, or "
            "leave it out to train data-parallel"
        )
    check_batch_split(config.batch_size)


def _check_model_fits(config: ExperimentConfig, model: Any) -> None:
    """Settings that the loaded model cannot satisfy, before any training."""
    cfg = model.cfg
    n_layers, d_mlp = cfg.n_layers, cfg.d_mlp
    limit = {"count": n_layers * d_mlp, "per-layer": d_mlp}.get(config.selection)
    if limit is not None and config.count > limit:
        where = (
            f"{n_layers} layers x {d_mlp} MLP neurons = {limit} in all"
            if config.selection == "count"
            else f"{d_mlp} MLP neurons per layer"
        )
        raise NeuroplasticError(
            f"--count {config.count} with --selection {config.selection} is more neurons than "
            f"{config.model} has ({where}); give --count {limit} or less"
        )
    n_total = n_layers * d_mlp
    per_round = {
        "fraction": max(1, round(config.fraction * n_total)),
        "count": config.count,
        "per-layer": config.count * n_layers,
    }[config.selection]
    _check_control_fits(config, n_layers, d_mlp, per_round)
    # A later round's control holds the concept's earlier rounds and as many random neurons as
    # its last round adds, drawn outside all the concept's rounds: R + 1 rounds' worth in all.
    control = 0 if config.baseline == "none" or config.rounds == 1 else per_round
    if config.rounds > 1 and config.rounds * per_round + control > n_total:
        most = (n_total - control) // per_round if control else n_total // per_round
        raise NeuroplasticError(
            f"--rounds {config.rounds} holds {per_round} more neurons each round, "
            f"{config.rounds * per_round} in all"
            + (f", and the last round's control {per_round} more outside them" if control else "")
            + f", but {config.model} has {n_total}; give --rounds {max(1, most)} or less"
        )
    # The two pre-emption arms draw their extra neurons from the same survivors: past half of
    # them they must share most of their picks, and the comparison says nothing.
    survivors = n_total - per_round
    if config.preempt and config.preempt_count > survivors // 2:
        raise NeuroplasticError(
            f"--preempt-count {config.preempt_count} is more than half of the {survivors} "
            f"neurons {config.model} has besides the concept's {per_round}, so the preempt and "
            f"preempt-random arms would hold mostly the same neurons; give --preempt-count "
            f"{survivors // 2} or less"
        )
    n_ctx = getattr(cfg, "n_ctx", None)
    if isinstance(n_ctx, int) and config.max_length > n_ctx:
        raise NeuroplasticError(
            f"--max-length {config.max_length} exceeds {config.model}'s {n_ctx} positions; "
            f"give --max-length {n_ctx} or less"
        )


def _check_control_fits(config: ExperimentConfig, n_layers: int, d_mlp: int, held: int) -> None:
    """A control of as many neurons outside the set (``held`` of them) must exist: in all for
    ``random-global``, in every layer for ``random``. Past half of the model neither does,
    whatever the ranking; with ``--selection per-layer`` each layer's count is the setting.
    (Below half, a ranking too dense in one layer for ``random`` is known only once the base
    is ranked; ``random-global`` then works, as that refusal says.)"""
    if config.removal != "neurons" or config.baseline not in ("random", "random-global"):
        return
    n_total = n_layers * d_mlp
    if config.selection == "per-layer" and config.count > d_mlp - config.count:
        what = f"--count {config.count} per layer holds more than half of each layer's {d_mlp}"
        fix = f"give --count {d_mlp // 2} or less"
    elif held > n_total - held:
        flag = (
            f"--fraction {config.fraction}"
            if config.selection == "fraction"
            else f"--count {config.count}"
        )
        what = f"{flag} holds {held} of the {n_total} MLP neurons, more than half"
        fix = (
            "give --fraction 0.5 or less"
            if config.selection == "fraction"
            else f"give --count {n_total // 2} or less"
        )
    else:
        return
    raise NeuroplasticError(
        f"{what} of {config.model}: too few are left outside the set for a --baseline "
        f"{config.baseline} control of as many neurons; {fix}, or use --baseline random-any "
        "(as many neurons drawn from all, the set's included) or --baseline none"
    )


def _check_same_sentences(run: RunDir, tokens: list[list[str]], dataset: str) -> None:
    """Refuse to resume (or rerun) a run whose data changed since it began: its stored stages
    describe other sentences, and rewriting its record of them would hide that."""
    if not run.sentences_path.is_file():
        return
    try:
        recorded = run.sentences()
    except CorruptFile:  # rewritten below, as a derived file
        return
    if recorded == tokens:
        return
    changed = [i for i, (a, b) in enumerate(zip(recorded, tokens, strict=False)) if a != b]
    where = (
        f"{len(changed)} of its {len(recorded)} probe sentences differ (the first: sentence "
        f"{changed[0]})"
        if changed
        else f"it had {len(recorded)} probe sentences, the data now gives {len(tokens)}"
    )
    raise NeuroplasticError(
        f"the data ({dataset}) changed since the run in {run.path} began: {where}; restore the "
        "data it was made with to resume it, or give a new --out"
    )


def _check_same_data(run: RunDir, splits: dict[str, list[NerSentence]], dataset: str) -> None:
    """Refuse to resume a run whose train, validation or probe sentences changed since it
    began (data.json); record them when it begins (or when an older run recorded none)."""
    now = fingerprint(splits)
    if run.data_path.is_file():
        try:
            recorded = run.data_fingerprint()
        except CorruptFile as error:
            _warn(f"{error}; recording the data given now, unchecked")
        else:
            changes = changed_splits(recorded, now)
            if changes:
                raise NeuroplasticError(
                    f"the data ({dataset}) changed since the run in {run.path} began: "
                    f"{'; '.join(changes)}; restore the data it was made with to resume it, "
                    "or give a new --out"
                )
            if recorded == now:
                return
    run.write_data_fingerprint(now)
