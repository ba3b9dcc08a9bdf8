"""The relearning experiment, top to bottom: fine-tune, rank, select, then for each arm retrain
and measure.

    base ──► statistics + ranking ──► neuron sets ──► for each arm (concept, random control):
                                                        pruned ──► retrain-1 ──► ... retrain-S
                                                        (evaluate + statistics + ranking each)

The two arms differ in the neurons held and in nothing else: both start from the same base
weights and retrain on the same batches, in the same order, with the same dropout masks and
the same learning-rate schedule. Persistence lives in :class:`Checkpointer`: a rerun of the
same command resumes after the last completed stage and ends with the same summary.

The concept arm also predicts, before any retraining, which surviving neurons will take the
concept over (:mod:`neuroplastic.analysis.predict`): the predictors read at base run on the base
weights before the removal, those read at the pruned stage with the removal in place; the scores are
saved with the pruned stage (``predictions.safetensors``) and, once the last stage is done,
checked against what happened (``summary.json``, key ``prediction``). They run in eval mode on
rank 0 and draw no random numbers from the global generator: training is the same with them.

Launched as several processes (``torchrun``, ``accelerate launch``), every rank trains a
replica of the model with the neurons held (gradients averaged by DDP), evaluates it (so every
replica checks its own held neurons) and takes its share of the statistics; rank 0 alone locks,
reads and writes the run directory, and hands what the others need to them (which stages are
done, weights, trainer state, the plateau loss) through :func:`distributed.on_main`: the
helpers that touch the run directory are ``@distributed.rank_zero`` (called on every rank, run
on rank 0), and ``setup.main_store`` / ``setup.main_run`` read the store that way.

:func:`run_experiment` below is the whole run; each step lives in its own module:
:mod:`~neuroplastic.experiment.setup` (:class:`Setup`, :class:`HeldSets`, :class:`StageEvent`),
:mod:`~neuroplastic.experiment.loading` and :mod:`~neuroplastic.experiment.checks` (setting up:
model, data, refusals), :mod:`~neuroplastic.experiment.base` (base fine-tuning and the naive
base), :mod:`~neuroplastic.experiment.removals` (what each arm holds: neuron sets, erasures),
:mod:`~neuroplastic.experiment.stages` (a stage's end and its files),
:mod:`~neuroplastic.experiment.predicting` (predictions, causal truth),
:mod:`~neuroplastic.experiment.retraining` (rounds and the chase) and
:mod:`~neuroplastic.experiment.recompute` (damaged stage files, on resumption).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from neuroplastic import distributed
from neuroplastic.config import CONCEPT_ARM, NAIVE_ARM, ONE_SHOT_ARM, ExperimentConfig
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.training import Trainer
from neuroplastic.core.training import tagging_loss as tagging_loss  # re-exported
from neuroplastic.experiment.base import (
    _load_initial_weights,
    _shared,
    _train_config,
    _train_to_plateau,
    naive_base_loss,
)
from neuroplastic.experiment.checks import _check_out, _warn
from neuroplastic.experiment.loading import _setup
from neuroplastic.experiment.loading import _train_and_probe as _train_and_probe  # re-exported
from neuroplastic.experiment.recompute import _recompute_stage_files
from neuroplastic.experiment.removals import (
    _base_neuron_sets,
    _naive_erasure,
    _naive_set,
    _note_control,
    _one_shot_set,
    _preempt_sets,
    _prepare_erasures,
)
from neuroplastic.experiment.retraining import _chase, _process_counts, _retrain_arm
from neuroplastic.experiment.setup import HeldSets as HeldSets  # re-exported
from neuroplastic.experiment.setup import Setup as Setup  # re-exported
from neuroplastic.experiment.setup import StageEvent as StageEvent  # re-exported
from neuroplastic.experiment.stages import _finish_stage, _load_on_main, _write_sentence_activations
from neuroplastic.experiment.summary import build_summary
from neuroplastic.io import atomic_write_json
from neuroplastic.progress import report_line
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.repair import recover
from neuroplastic.store.rundir import RunDir


def run_experiment(
    config: ExperimentConfig,
    out: str | Path,
    progress: bool = True,
    log=report_line,
    warn=None,
    base_from: Sequence[str | Path] = (),
    keep_base: bool = False,
    on_stage: Callable[[StageEvent], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out``; returns the summary. The directory is
    locked for the whole run: a second run on it is refused. ``warn`` gets a line per run file
    found corrupt and recomputed (default: on stderr, even when quiet).

    ``base_from``: finished runs whose fine-tuned base (and naive base) this run may load
    instead of training it, where their base settings are this run's
    (:mod:`neuroplastic.store.shared_base`: what a sweep does for its cells). ``keep_base``: keep
    this run's base weights when it finishes, for such runs to come. ``on_stage``: told of
    each :class:`StageEvent` (tests kill runs and check replicas with it).

    Under a launcher for several processes, every rank calls this; only rank 0 logs, warns and
    touches ``out``, and every rank returns the summary."""
    device = distributed.init_from_environment(config.device)  # this rank's device
    main = distributed.is_main()
    if not main:
        progress, log, warn = False, _silent, _silent
    store = Checkpointer(RunDir(out), save_checkpoints=config.save_checkpoints)
    created = main and not Path(out).exists()  # a failed start removes what it made
    try:
        # Refuses what cannot be read nor recomputed; on rank 0, for every rank.
        recovery = _open(store, config, Path(out))
        for warning in recovery.warnings:
            (warn or _warn)(warning)
        setup = _setup(config, store, progress, log, device, on_stage)  # bad settings fail here
        if main:
            store.write_config(config)
        base_ranking = _fine_tune_base(setup, log, base_from)
        if config.removal != "neurons":  # fitted on the base weights, before any stage needs it
            setup = replace(setup, erasures=_prepare_erasures(setup, log))
        _recompute_stage_files(setup, recovery.stages)
        neuron_sets = _base_neuron_sets(setup, base_ranking)
        _note_control(setup, neuron_sets, log)
        held = HeldSets(setup, neuron_sets)
        if config.rounds > 1:
            _chase(setup, list(neuron_sets), held, log)
            # Then every neuron the chase removed, from base at once, for one round.
            one_shot = _one_shot_set(setup, held)
            held = HeldSets(setup, {**neuron_sets, ONE_SHOT_ARM: one_shot})
            _retrain_arm(setup, ONE_SHOT_ARM, held, log)
        else:
            for arm in neuron_sets:
                _retrain_arm(setup, arm, held, log)
        if config.naive:  # the concept learned from nothing, the concept arm's neurons held
            _fine_tune_naive(setup, log, base_from)
            naive = _naive_set(setup, neuron_sets[CONCEPT_ARM])
            if config.removal != "neurons":
                setup = replace(setup, erasures=_naive_erasure(setup))
            held = HeldSets(setup, {**neuron_sets, NAIVE_ARM: naive})
            _retrain_arm(setup, NAIVE_ARM, held, log)
        if config.preempt:  # from the concept arm's predictions, made at its pruned stage
            preempted = _preempt_sets(setup, neuron_sets[CONCEPT_ARM])
            held = HeldSets(setup, {**neuron_sets, **preempted})
            for arm in preempted:
                _retrain_arm(setup, arm, held, log)
        return _finish_run(setup, held, keep_base)
    finally:
        store.unlock()
        if created:
            _remove_if_nothing_written(store)


def _remove_if_nothing_written(store: Checkpointer) -> None:
    """Delete a run directory this call created and left no result in (:data:`RESULTS`: a
    stage, a neuron set, a summary; its config, data record and sentences are not results): a
    start that failed on a setting, a missing --checkpoint say, leaves nothing behind to
    refuse the corrected command."""
    if store.run.path.is_dir() and not store.results():
        shutil.rmtree(store.run.path, ignore_errors=True)


@distributed.rank_zero
def _open(store: Checkpointer, config: ExperimentConfig, out: Path):
    """Check ``out``, lock it and check its config against ``config`` (rank 0's work)."""
    _check_out(out)  # before the lock, which creates the directory
    store.lock()
    found = store.check_config(config)
    recovery = recover(store, config, found.unreadable, found.lost)
    recovery.warnings[:0] = found.warnings
    return recovery


def _fine_tune_base(setup: Setup, log, base_from: Sequence[str | Path] = ()) -> Ranking | None:
    """Fine-tune until the probe loss plateaus (or load a checkpoint, or a sibling run's base
    of the same base settings), then measure the base; returns its ranking (None when the base
    was done before: its ranking is on disk)."""
    config = setup.config
    if setup.main_store.done(CONCEPT_ARM, "base"):
        log("[base] already done; resuming")
        return None
    losses: list[float] = []
    shared = _shared(setup, base_from, CONCEPT_ARM)
    if config.checkpoint:
        _load_on_main(setup.module, Path(config.checkpoint))
        base = {"steps": 0, "stopped": "checkpoint", "probe_loss": []}
    elif shared is not None:
        distributed.on_main(partial(shared.load_into, setup.module))
        distributed.broadcast_parameters(setup.module)
        base, losses = shared.base, shared.losses
        log(f"[base] fine-tuned weights loaded from {shared.source} (the same base settings)")
    else:
        base, losses = _train_to_plateau(setup, log)
    return _finish_stage(setup, CONCEPT_ARM, "base", 0, losses, None, [], log, base=base)


def _fine_tune_naive(setup: Setup, log, base_from: Sequence[str | Path] = ()) -> None:
    """The naive arm's base: the concept arm's base fine-tuning exactly (the same initial
    weights and head, batches, order, dropout, schedule and steps) but with the concept's
    tokens out of the loss and its classes out of the softmax
    (:func:`~neuroplastic.core.relearn.concept_neutral_loss`), so the model neither learns the
    concept nor learns to refuse it; then measured."""
    config = setup.config
    if setup.main_store.done(NAIVE_ARM, "base"):
        log(f"[{NAIVE_ARM}] base already done; resuming")
        return
    shared = _shared(setup, base_from, NAIVE_ARM)
    if shared is not None:
        distributed.on_main(partial(shared.load_into, setup.module))
        distributed.broadcast_parameters(setup.module)
        log(f"[{NAIVE_ARM}] base weights loaded from {shared.source} (the same base settings)")
        _finish_stage(setup, NAIVE_ARM, "base", 0, shared.losses, None, [], log, base=shared.base)
        return
    steps = setup.main_store.marker(CONCEPT_ARM, "base")["base"]["steps"]
    _load_initial_weights(setup)
    trainer = Trainer(
        setup.trainee, naive_base_loss(setup), setup.train_data, setup.base_steps,
        _train_config(config), seed=config.seed,
    )  # fmt: skip
    losses = trainer.run(
        steps,
        on_step=setup.step_hook(NAIVE_ARM, "base", 0),
        progress=setup.progress,
        description=f"[{NAIVE_ARM}] base",
    )
    base = {
        "steps": steps,
        "stopped": "matched",
        "probe_loss": [],
        "concept_in_loss": False,
        "concept_in_softmax": False,
    }
    _finish_stage(setup, NAIVE_ARM, "base", 0, losses, None, [], log, base=base)


@distributed.rank_zero
def _finish_run(setup: Setup, held: HeldSets, keep_base: bool = False) -> dict[str, Any]:
    summary = build_summary(setup, held, _process_counts(setup)).to_dict()
    atomic_write_json(setup.run.summary_path, summary)
    _write_sentence_activations(setup, held)  # while the stages' weights are still kept
    setup.store.release(keep={"base"} if keep_base else set())
    return summary


def _silent(*_: object) -> None:
    pass
