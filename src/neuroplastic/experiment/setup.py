"""What every step of a run is handed: :class:`Setup` (the model with its head, the data, the
store, the settings), the neuron sets each arm holds in each round (:class:`HeldSets`) and what
``run_experiment(on_stage=...)`` is told (:class:`StageEvent`).

A :class:`Setup` is frozen: what a run learns as it goes is handed on explicitly (the hooks the
arm now retraining holds) or makes a new one (``dataclasses.replace``: the erasures, once
fitted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, Literal

import torch

from neuroplastic import distributed
from neuroplastic.config import CONCEPT_ARM, ExperimentConfig
from neuroplastic.core.erasure import LinearErasure
from neuroplastic.core.halves import ProbeSplit, split_probe
from neuroplastic.core.held_hooks import HeldHooks
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.relearn import relearn_loss
from neuroplastic.core.training import lm_loss, tagging_loss
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.experiment.chase import next_concept_set, next_random_set
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.rundir import RunDir, round_stages

#: When :class:`StageEvent` is sent: after each optimizer step of a stage's training
#: (``step``), when its training is done and nothing of it is evaluated or written
#: (``trained``), and once its files and marker are written (``finished``).
StageMoment = Literal["step", "trained", "finished"]


@dataclass(frozen=True)
class StageEvent:
    """What ``run_experiment(on_stage=...)`` is told, on every rank, as a stage goes by: for
    tests and instrumentation (kill a run at a chosen point, check what a replica holds). An
    exception raised by the callback stops the run there, as a kill would; whatever the stage
    had not yet written is redone on resumption."""

    arm: str
    stage: str  # "base", "pruned", "retrain-1", ... (round-suffixed in a chase)
    moment: StageMoment
    # retraining steps so far, as the stage's metrics row counts them (0 at a base's end);
    # in a base's own step events, its fine-tuning steps
    step: int
    setup: Setup  # the run's live objects: model, data, store
    dead: torch.Tensor | None = None  # the neurons held zero, if the removal is a neuron set
    held: HeldHooks | None = None  # the removal's hooks now held (None: none held)


@dataclass(frozen=True, eq=False)
class Setup:
    """What every stage needs: the model (with head), the data, and where results go. Frozen:
    the erasures, known once the base is fitted, come in a new one (``dataclasses.replace``);
    the hooks an arm holds while it retrains are handed to what checks them."""

    config: ExperimentConfig
    store: Checkpointer
    module: torch.nn.Module
    model: Any
    train_data: ConceptDataset
    validation_data: ConceptDataset
    probe_data: ConceptDataset  # the sentences neuron statistics and rankings are taken on
    data_overlap: dict[str, Any]  # share of validation / probe mentions seen in training
    progress: bool
    base_steps: int  # the cap on base fine-tuning, in optimizer steps (from epochs if given)
    stage_steps: int  # optimizer steps per retraining stage (from epochs if given)
    replica: torch.nn.Module | None = None  # what trains: ``module``, or it wrapped in DDP
    #: the probe sentences' two halves: predictors read one, ground truths the other
    probe_split: ProbeSplit | None = None
    #: what every arm retrains on (:mod:`neuroplastic.core.relearn`; the training data by default)
    relearn_data: ConceptDataset | None = None
    #: with ``--removal leace|direction``: each arm's erasure
    #: (:func:`~neuroplastic.experiment.removals._prepare_erasures`)
    erasures: dict[str, LinearErasure] = field(default_factory=dict)
    #: told of every :class:`StageEvent` (``run_experiment``'s ``on_stage``)
    on_stage: Callable[[StageEvent], None] | None = None

    def tell(
        self,
        arm: str,
        stage: str,
        moment: StageMoment,
        step: int,
        dead: torch.Tensor | None,
        held: HeldHooks | None = None,
    ) -> None:
        if self.on_stage is not None:
            self.on_stage(StageEvent(arm, stage, moment, step, self, dead, held))

    def step_hook(
        self,
        arm: str,
        stage: str,
        first_step: int,
        dead: torch.Tensor | None = None,
        then: Callable[[int, float], None] | None = None,
        held: HeldHooks | None = None,
    ) -> Callable[[int, float], None] | None:
        """An ``on_step`` callback for training that starts at the arm's step ``first_step``:
        tells ``on_stage`` of each step, then calls ``then`` (None when neither is wanted)."""
        if self.on_stage is None:
            return then

        def on_step(n: int, loss: float) -> None:
            self.tell(arm, stage, "step", first_step + n, dead, held)
            if then is not None:
                then(n, loss)

        return on_step

    @cached_property
    def rank_data(self) -> ConceptDataset:
        """The probe sentences as statistics, rankings and erasers read them: at each token for
        ``--task ner``; for ``--task lm`` at the position that *predicts* it, where a causal
        LM's loss on a concept token is computed (:meth:`ConceptDataset.predicting`). At the
        concept's own tokens the removal is not the concept's: ranked there, SmolLM2's top
        neurons raise the next-token loss on place names no more than a random set does."""
        return self.probe_data.predicting() if self.config.task == "lm" else self.probe_data

    @property
    def predict_data(self) -> ConceptDataset:
        """The probe sentences the predictors read (:mod:`neuroplastic.core.halves`)."""
        assert self.probe_split is not None
        return self.probe_data.subset(self.probe_split.predict)

    @property
    def readout_split(self) -> ProbeSplit:
        """The validation sentences' two halves the per-layer probes use (``predict``: the
        half they are fitted on, ``truth``: the half they are scored on): disjoint from the
        probe sentences the ranking and the erasers are fitted on
        (:func:`~neuroplastic.experiment.stages._readability`)."""
        return split_probe(len(self.validation_data), self.config.seed, salt=READOUT_SALT)

    @property
    def trainee(self) -> torch.nn.Module:
        return self.module if self.replica is None else self.replica

    @property
    def run(self) -> RunDir:
        return self.store.run

    @property
    def main_store(self) -> Checkpointer:
        """The store, each method call made on rank 0 and its result handed to every rank."""
        return distributed.OnMain(self.store)  # type: ignore[return-value]

    @property
    def main_run(self) -> RunDir:
        """The run directory, read on rank 0 and the result handed to every rank."""
        return distributed.OnMain(self.store.run)  # type: ignore[return-value]

    def loss_fn(self):
        return tagging_loss if self.config.task == "ner" else lm_loss

    def concept_id(self) -> int:
        return self.train_data.label_id(self.config.concept)

    def relearn_loss(self):
        """Retraining's loss (:func:`neuroplastic.core.relearn.relearn_loss`)."""
        return relearn_loss(self.loss_fn(), self.config, self.concept_id())


class HeldSets:
    """The neurons each arm holds in each round, computed on rank 0 from the run's files (and
    the same on every resumption: the rankings they come from are verified files) and handed
    to every rank. Round 1's are the base sets; a later round's are saved, as computed, to
    ``neurons/{arm}-r{R}.json``: the concept arm's from its last ranking, the control's the
    concept arm's previous set plus random survivors matching the concept arm's additions."""

    def __init__(self, setup: Setup, base_sets: dict[str, NeuronSet]) -> None:
        self.setup, self.arms = setup, list(base_sets)
        self._local = {(arm, 1): neurons for arm, neurons in base_sets.items()}
        self._shared: dict[tuple[str, int], NeuronSet] = dict(self._local)

    def __call__(self, arm: str, round_: int) -> NeuronSet:
        if (arm, round_) not in self._shared:
            self._shared[arm, round_] = distributed.on_main(partial(self.local, arm, round_))
        return self._shared[arm, round_]

    def local(self, arm: str, round_: int) -> NeuronSet:
        """On rank 0 (or one process): the set, computed and saved if not yet known."""
        if (arm, round_) in self._local:
            return self._local[arm, round_]
        config, run = self.setup.config, self.setup.run
        if arm == CONCEPT_ARM:
            last = round_stages(config.stages, round_ - 1)[-1]
            neurons = next_concept_set(
                self.local(CONCEPT_ARM, round_ - 1), run.stage(CONCEPT_ARM, last).ranking, config
            )
        else:
            # The control branches from the concept model round r-1 left: it holds that
            # model's neurons plus as many random survivors as the concept arm adds.
            neurons = next_random_set(
                self.local(CONCEPT_ARM, round_ - 1),
                self.local(CONCEPT_ARM, round_ - 1),
                self.local(CONCEPT_ARM, round_),
                seed=config.seed + round_,
                per_layer=config.baseline == "random",
            )
        neurons.save(run.neurons_path(arm, round_))
        self._local[arm, round_] = neurons
        return neurons


#: the salt of the validation sentences' hash split for the per-layer probes
READOUT_SALT = "readout"
