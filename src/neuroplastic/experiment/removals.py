"""What each arm holds: its neuron set (the concept's from the base ranking, its control, the
naive, one-shot and pre-empting arms'), or its erasure with ``--removal leace|direction``."""

from __future__ import annotations

from neuroplastic import distributed
from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.predict import Predictions
from neuroplastic.config import CONCEPT_ARM, NAIVE_ARM, ONE_SHOT_ARM, PREEMPT_ORACLE_ARM, RANDOM_ARM
from neuroplastic.core.erasure import LinearErasure, fit_direction, fit_leace, fit_matched_control
from neuroplastic.core.neurons import NeuronSet, control_kind
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.removal import ErasureRemoval, NeuronRemoval, Removal
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.chase import rounds_run, select
from neuroplastic.experiment.preempt import oracle_set, preempt_sets, realised_gain
from neuroplastic.experiment.setup import HeldSets, Setup
from neuroplastic.store.rundir import round_stages


@distributed.rank_zero
def _base_neuron_sets(setup: Setup, ranking: Ranking | None = None) -> dict[str, NeuronSet]:
    """Every arm's set from the base ``ranking`` (as just computed), or, on resumption, from
    its disk copy (verified against the manifest; the same ranking to the bit)."""
    if ranking is None:
        ranking = setup.run.stage(CONCEPT_ARM, "base").ranking
    return _neuron_sets(setup, ranking)


def _neuron_sets(setup: Setup, ranking: Ranking) -> dict[str, NeuronSet]:
    config = setup.config
    concept = select(ranking, config)
    if config.removal != "neurons":
        # An erasure silences no neuron: every arm's set is empty, so that each neuron
        # analysis reads the whole model as alive; the erasure is in removals/{arm}.safetensors.
        sets = {
            arm: NeuronSet(concept.n_layers, concept.d_mlp, (), setup.erasures[arm].describe())
            for arm in (CONCEPT_ARM, RANDOM_ARM)
            if arm in config.arms
        }
        for arm, neurons in sets.items():
            neurons.save(setup.run.neurons_path(arm))
        return sets
    sets = {CONCEPT_ARM: concept}
    draw = {
        "random": concept.random_matching,
        "random-global": concept.random_global,
        "random-any": concept.random_any,
    }.get(config.baseline)
    if draw is not None:
        try:
            sets[RANDOM_ARM] = draw(seed=config.seed)
        except NeuroplasticError as error:
            # Known only once the base is ranked; a run's settings are fixed from its start.
            raise NeuroplasticError(
                f"{error}; give the changed settings a new --out (those of {setup.run.path} "
                "are fixed: its base is done)"
            ) from None
    for arm, neurons in sets.items():
        neurons.save(setup.run.neurons_path(arm))
    return sets


def _note_control(setup: Setup, neuron_sets: dict[str, NeuronSet], log) -> None:
    """Say so when the control is not a random draw (the complement) or overlaps the set."""
    if RANDOM_ARM not in neuron_sets or setup.config.removal != "neurons":
        return
    control, concept = neuron_sets[RANDOM_ARM], neuron_sets[CONCEPT_ARM]
    kind = control_kind(setup.config.baseline, control, concept)
    if kind == "complement":
        log(
            f"note: the control holds all {len(control)} neurons outside the concept set (per "
            "layer where matched): it is the set's complement, the same for every seed, and is "
            "reported as 'complement'. --baseline random-any draws the control from all neurons"
        )
    elif kind == "random-any":
        log(
            f"note: the random-any control shares {control.overlap(concept)} of its "
            f"{len(control)} neurons with the concept set"
        )


@distributed.rank_zero
def _naive_set(setup: Setup, concept: NeuronSet) -> NeuronSet:
    """The naive arm's neurons (rank 0): the concept arm's, saved as ``neurons/naive.json``."""
    neurons = NeuronSet(
        concept.n_layers,
        concept.d_mlp,
        concept.neurons,
        "the concept arm's neurons, held in the model fine-tuned without the concept",
    )
    neurons.save(setup.run.neurons_path(NAIVE_ARM))
    return neurons


@distributed.rank_zero
def _one_shot_set(setup: Setup, held: HeldSets) -> NeuronSet:
    """The one-shot arm's set (rank 0): every neuron the concept arm holds after the last
    round the chase ran (each round adds to the last), saved as ``neurons/one-shot.json``."""
    rounds = rounds_run(setup.store, setup.config)
    union = held.local(CONCEPT_ARM, rounds)
    neurons = NeuronSet(
        union.n_layers,
        union.d_mlp,
        union.neurons,
        f"every neuron of the chase's {rounds} rounds, held from the base at once",
    )
    neurons.save(setup.run.neurons_path(ONE_SHOT_ARM))
    return neurons


@distributed.rank_zero
def _preempt_sets(setup: Setup, concept: NeuronSet) -> dict[str, NeuronSet]:
    """The pre-empting arms' sets (:mod:`neuroplastic.experiment.preempt`), from the concept arm's
    predictions (rank 0)."""
    config, run = setup.config, setup.run
    # The oracle: what the concept arm (run first, on the same batches) realised.
    arm = ArmRun.load(run, CONCEPT_ARM)
    first_round_last = round_stages(config.stages, 1)[-1]
    pruned, last = arm.stages["pruned"].ranking, arm.stages[first_round_last].ranking
    if config.preempt == "oracle":
        sets = preempt_sets(
            concept, realised_gain(pruned, last, concept), "oracle", config.preempt_count,
            config.seed,
        )  # fmt: skip
    else:
        path = run.predictions_path(CONCEPT_ARM)
        run.manifest.verify(path)  # the file the run wrote, not another
        sets = preempt_sets(
            concept, Predictions.load(path), config.preempt, config.preempt_count, config.seed
        )
        sets[PREEMPT_ORACLE_ARM] = oracle_set(
            concept, pruned, last, config.preempt_count, config.seed
        )
    for arm, neurons in sets.items():
        neurons.save(setup.run.neurons_path(arm))
    return sets


#: what an erasure of each kind is fitted with (:mod:`neuroplastic.core.erasure`)
ERASURE_FITTERS = {"leace": fit_leace, "direction": fit_direction}


@distributed.rank_zero
def _prepare_erasures(setup: Setup, log) -> dict[str, LinearErasure]:
    """Each arm's erasure (rank 0): read back from ``removals/{arm}.safetensors`` where the run
    saved it (a resumption holds exactly what it held), else fitted on the base weights in eval
    mode on the probe sentences (the concept's), or drawn (the random control: as many random
    orthonormal directions at the same points, seeded, removing the same share of each layer's
    variance on the same sentences: :func:`~neuroplastic.core.erasure.fit_matched_control`),
    then saved and listed in the manifest."""
    config, run, store = setup.config, setup.run, setup.store
    erasures = {}
    for arm in (CONCEPT_ARM, RANDOM_ARM, NAIVE_ARM):
        path = run.removal_path(arm)
        if path.is_file() and run.manifest.matches(path):
            erasures[arm] = LinearErasure.load(path)
    wanted = [arm for arm in config.arms if arm in (CONCEPT_ARM, RANDOM_ARM)]
    if all(arm in erasures for arm in wanted):
        return erasures
    if not run.weights_path(CONCEPT_ARM, "base").is_file():
        raise NeuroplasticError(
            f"{run.path}: the {config.removal} erasure the run held is missing or altered "
            f"({run.removal_path(CONCEPT_ARM)}) and the base weights it was fitted on are gone; "
            "rerun into a new --out"
        )
    store.restore(CONCEPT_ARM, "base", setup.module)
    setup.module.eval()  # no dropout in what the erasure is fitted on
    layers = config.erasure_layers(int(setup.model.cfg.n_layers))
    if CONCEPT_ARM not in erasures:
        erasures[CONCEPT_ARM] = ERASURE_FITTERS[config.removal](
            setup.model, setup.rank_data, config.concept, layers, progress=setup.progress
        )
        _save_erasure(setup, CONCEPT_ARM, erasures[CONCEPT_ARM])
    if RANDOM_ARM in wanted and RANDOM_ARM not in erasures:
        erasures[RANDOM_ARM] = fit_matched_control(
            setup.model, setup.rank_data, erasures[CONCEPT_ARM], config.seed,
            progress=setup.progress,
        )  # fmt: skip
        _save_erasure(setup, RANDOM_ARM, erasures[RANDOM_ARM])
    for arm in wanted:
        log(f"[{arm}] removal: {erasures[arm].describe()}")
    return erasures


@distributed.rank_zero
def _naive_erasure(setup: Setup) -> dict[str, LinearErasure]:
    """The naive arm holds the concept arm's erasure, as fitted on the concept's base (rank 0)."""
    erasures = dict(setup.erasures)
    if NAIVE_ARM not in erasures:
        erasures[NAIVE_ARM] = erasures[CONCEPT_ARM]
        _save_erasure(setup, NAIVE_ARM, erasures[NAIVE_ARM])
    return erasures


def _save_erasure(setup: Setup, arm: str, erasure: LinearErasure) -> None:
    path = setup.run.removal_path(arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    erasure.save(path)
    setup.store.record([path])


def _removal(setup: Setup, arm: str, neurons: NeuronSet) -> Removal:
    """What ``arm`` holds while it retrains and is evaluated: its ``neurons`` ablated, or, with
    ``--removal leace|direction``, its erasure."""
    if setup.config.removal == "neurons":
        return NeuronRemoval(neurons, setup.config.mode)
    return ErasureRemoval(setup.erasures[arm])
