"""Retraining: each arm's round with its removal held, stage by stage, and a chase's rounds
(``--rounds``), each later round's control branching from the concept arm's model."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from neuroplastic import distributed
from neuroplastic.config import CONCEPT_ARM
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.training import Trainer
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.base import _train_config
from neuroplastic.experiment.chase import ControlCapacityError, chase_stop, record_capacity_stop
from neuroplastic.experiment.predicting import (
    _causal_truth,
    _has_causal_truth,
    _predict_at_base,
    _predict_at_pruned,
    _predicted,
)
from neuroplastic.experiment.removals import _removal
from neuroplastic.experiment.setup import HeldSets, Setup
from neuroplastic.experiment.stages import _finish_stage, _periodic_eval
from neuroplastic.store.rundir import round_stages, stage_names, stage_owner


def _retrain_arm(setup: Setup, arm: str, held: HeldSets, log) -> None:
    """Ablate the arm's neurons in the base model and retrain, evaluating after every stage."""
    _retrain_round(setup, arm, 1, held(arm, 1), log)


def _chase(setup: Setup, arms: Sequence[str], held: HeldSets, log) -> None:
    """A chase (``--rounds``), round by round. Round 1 is the experiment: every arm from the
    base weights. A later round's control branches from the same model as the concept arm's
    round: the concept model round r-1 left, holding its neurons plus as many random survivors
    per layer as the concept arm adds in round r. So the control runs first (those weights
    are still kept), then the concept arm; the two differ in the neurons added and in nothing
    else."""
    config = setup.config
    for arm in arms:
        _retrain_round(setup, arm, 1, held(arm, 1), log)
    for round_ in range(2, config.rounds + 1):
        stop = distributed.on_main(partial(chase_stop, setup.store, config, round_ - 1))
        # The round's sets before any of its training: a control that cannot be drawn stops
        # the chase here, with every finished round's results kept.
        stop = stop or _round_sets(setup, held, arms, round_)
        if stop:
            log(f"[concept] the chase stops after round {round_ - 1}: {stop}")
            return
        for arm in arms:
            if arm != CONCEPT_ARM:
                _retrain_round(setup, arm, round_, held(arm, round_), log, branch=CONCEPT_ARM)
        _retrain_round(setup, CONCEPT_ARM, round_, held(CONCEPT_ARM, round_), log)


@distributed.rank_zero
def _round_sets(setup: Setup, held: HeldSets, arms: Sequence[str], round_: int) -> str | None:
    """Every arm's set for ``round_`` (rank 0), or why the chase stops (recorded)."""
    try:
        for arm in arms:
            held.local(arm, round_)
    except ControlCapacityError as error:
        # The concept's set of the round that will not run was saved with it: not a round.
        setup.run.neurons_path(CONCEPT_ARM, round_).unlink(missing_ok=True)
        return record_capacity_stop(setup.run, round_ - 1, error)
    return None


def _retrain_round(
    setup: Setup, arm: str, round_: int, neurons: NeuronSet, log, branch: str | None = None
) -> None:
    """Round ``round_`` of ``arm``: hold ``neurons``, evaluate (the round's ``pruned`` stage),
    then retrain stage by stage from the weights the last round ended with (the base weights
    in round 1; ``branch``'s, another arm's, when given), with a fresh optimizer, schedule and
    batch sequence per round."""
    config, store = setup.config, setup.store
    stages = round_stages(config.stages, round_)
    todo = distributed.on_main(lambda: [s for s in stages if not store.done(arm, s)])
    if not todo:
        log(f"[{arm}] {f'round {round_}: ' if config.rounds > 1 else ''}all stages done")
        return
    trainer = Trainer(
        setup.trainee,
        setup.relearn_loss(),
        setup.relearn_data if setup.relearn_data is not None else setup.train_data,
        config.stages * setup.stage_steps,
        _train_config(config, retraining=True),
        seed=config.seed + 1_000 * round_,  # one seed for all arms: the same batches, dropout
        schedule_steps=config.stages * setup.stage_steps
        if config.schedule == "continuous"
        else setup.stage_steps,
    )
    # A round starts from the weights the last round left: this arm's, or ``branch``'s.
    source = branch if branch is not None and todo[0] == stages[0] else arm
    previous, state = _restore_round_start(setup, arm, todo[0], source, log)
    if state is not None and todo[0] != stages[0]:
        trainer.load_state_dict(state)  # within the round; a new round starts afresh
    _run_stages(setup, arm, round_, todo, neurons, trainer, previous == "base", log)


def _restore_round_start(
    setup: Setup, arm: str, first: str, source: str, log
) -> tuple[str, dict | None]:
    """Load the weights stage ``first`` of ``arm`` starts from (the stage before it, as
    ``source`` left it: the base, or the last stage done) into every rank's model, dropping
    the arm's checkpoints no stage still needs; returns that stage's name and the trainer
    state saved with it (None after the base)."""
    store = setup.store
    every = stage_names(setup.config.stages, setup.config.rounds)
    previous = every[every.index(first) - 1]  # base, or the last stage of the last round

    def restore() -> dict | None:
        store.keep_only(arm, {"base", previous} if source == arm else {"base"})
        if previous == "base":
            store.restore(stage_owner(arm, "base"), "base", setup.module)
            return None
        state = store.restore(source, previous, setup.module)
        if state is None:
            raise NeuroplasticError(f"{setup.run.path}: the trainer state after {previous} is lost")
        return state

    state = distributed.on_main(restore)  # the trainer state, on every rank
    distributed.broadcast_parameters(setup.module)  # and rank 0's weights
    before = _processes(setup, source, previous)
    if before != distributed.world_size():
        log(
            f"note: [{arm}] {previous} ran with {before} process(es), this run has "
            f"{distributed.world_size()}: the global batches are the same, but dropout masks are "
            "drawn per process, so the result will not be bit-identical to a run never resumed"
        )
    return previous, state


def _run_stages(
    setup: Setup,
    arm: str,
    round_: int,
    todo: Sequence[str],
    neurons: NeuronSet,
    trainer: Trainer,
    from_base: bool,
    log,
) -> None:
    """Stages ``todo`` of ``arm``'s round ``round_`` with its removal held: the ``pruned`` one
    evaluated as the removal leaves the model, each later one after its training steps.
    ``from_base``: the round starts from the base weights (the removal's edit is made now, and
    the predictors, if any, read the base before it)."""
    config = setup.config
    stages = round_stages(config.stages, round_)
    every = stage_names(config.stages, config.rounds)
    offset = (round_ - 1) * config.stages * setup.stage_steps  # steps of the earlier rounds
    predict = None
    if from_base and _predicted(setup, arm):
        # On the base weights, before any removal (no hook held, no weight pruned yet).
        at_base = _predict_at_base(setup, neurons)
        predict = partial(_predict_at_pruned, setup, neurons, at_base)
    causal = None
    if _has_causal_truth(setup, arm, stages[-1]):
        causal = partial(_causal_truth, setup, arm, neurons)
    removal = _removal(setup, arm, neurons)
    if from_base:
        removal.start(setup.model)  # from the base weights; later stages carry its edit
    hold = removal.hold(setup.model)
    dead = removal.dead
    try:
        for stage in todo:
            rows: list[dict] = []
            losses: list[float] = []
            if stage != stages[0]:
                if config.schedule == "per-stage":
                    trainer.restart_schedule()
                first = offset + trainer.step
                evaluate_at_grid = _periodic_eval(setup, arm, stage, first, dead, rows, hold)
                losses = trainer.run(
                    setup.stage_steps,
                    on_step=setup.step_hook(arm, stage, first, dead, evaluate_at_grid, hold),
                    progress=setup.progress,
                    description=f"[{arm}] {stage}",
                )
            _finish_stage(
                setup, arm, stage, offset + trainer.step, losses, dead, rows, log,
                trainer_state=trainer.state_dict(),
                previous=_unless_base(every[every.index(stage) - 1]),
                predict=predict if stage == "pruned" else None,
                causal=causal if stage == stages[-1] else None, held=hold,
            )  # fmt: skip
    finally:
        if hold is not None:
            hold.remove()


@distributed.rank_zero
def _processes(setup: Setup, arm: str, stage: str) -> int:
    """How many processes computed ``stage`` (its marker; rank 0)."""
    return int(setup.store.marker(stage_owner(arm, stage), stage).get("processes", 1))


def _unless_base(stage: str) -> str | None:
    """The stage whose weights a new stage's save may drop: never the base's."""
    return None if stage == "base" else stage


def _process_counts(setup: Setup) -> list[int]:
    """Every number of processes the run's done stages were computed with."""
    config = setup.config
    stages = stage_names(config.stages, config.rounds)
    return sorted(
        {
            _processes(setup, arm, stage)
            for arm in config.arms
            for stage in stages
            if setup.store.done(stage_owner(arm, stage), stage)
        }
    )
