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
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from neuroplastic import distributed
from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.causal import CAUSAL_FILE, candidate_sets, damage
from neuroplastic.analysis.predict import (
    Predictions,
    ground_truth,
    predict_at_base,
    predict_at_pruned,
)
from neuroplastic.analysis.viewed import top_sentences, viewed_neurons
from neuroplastic.config import NAIVE_ARM, ONE_SHOT_ARM, ExperimentConfig
from neuroplastic.core.ablation import check_can_regrow
from neuroplastic.core.activations import neuron_activations
from neuroplastic.core.erasure import (
    LinearErasure,
    fit_direction,
    fit_leace,
    fit_matched_control,
)
from neuroplastic.core.halves import HALVES, ProbeSplit, split_probe
from neuroplastic.core.held_hooks import HeldHooks
from neuroplastic.core.models import check_device, is_decoder, load_model, model_device
from neuroplastic.core.neurons import NeuronSet, control_kind
from neuroplastic.core.probes import (
    POINTS,
    ResidualTap,
    layers_that_fit,
    probe_readings,
    probe_readings_of,
)
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.relearn import (
    concept_neutral_loss,
    concept_tag_ids,
    relearn_data,
    relearn_loss,
)
from neuroplastic.core.removal import ErasureRemoval, NeuronRemoval, Removal
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.core.stats import NeuronStats, collect_stats
from neuroplastic.core.training import (
    TokenClassifier,
    TrainConfig,
    Trainer,
    check_batch_split,
    evaluate,
    lm_loss,
    mean_loss,
    tagging_loss,
)
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.fingerprint import changed_splits, fingerprint
from neuroplastic.data.load import concept_labels, load_corpus
from neuroplastic.data.overlap import mention_overlap
from neuroplastic.data.types import NerCorpus, NerSentence
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.chase import (
    ControlCapacityError,
    chase_stop,
    next_concept_set,
    next_random_set,
    record_capacity_stop,
    rounds_run,
    select,
)
from neuroplastic.experiment.preempt import oracle_set, preempt_sets, realised_gain
from neuroplastic.experiment.summary import build_summary
from neuroplastic.io import atomic_write_json
from neuroplastic.progress import report_line
from neuroplastic.store.checkpoint import Checkpointer, load_weights
from neuroplastic.store.manifest import CorruptFile
from neuroplastic.store.repair import Recompute, recover
from neuroplastic.store.rundir import (
    RunDir,
    directory_kind,
    round_stages,
    stage_key,
    stage_names,
    stage_owner,
    stage_round,
    top_tokens_frame,
)
from neuroplastic.store.shared_base import SharedBase, find_shared_base

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
    setup: Setup  # the run's live objects: model, data, store, the hooks now held
    dead: torch.Tensor | None = None  # the neurons held zero, if the removal is a neuron set


@dataclass
class Setup:
    """What every stage needs: the model (with head), the data, and where results go."""

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
    #: with ``--removal leace|direction``: each arm's erasure (:func:`_prepare_erasures`)
    erasures: dict[str, LinearErasure] = field(default_factory=dict)
    #: the hooks the arm now retraining holds, checked at every evaluation (None: none held)
    held: HeldHooks | None = None
    #: told of every :class:`StageEvent` (``run_experiment``'s ``on_stage``)
    on_stage: Callable[[StageEvent], None] | None = None

    def tell(
        self, arm: str, stage: str, moment: StageMoment, step: int, dead: torch.Tensor | None
    ) -> None:
        if self.on_stage is not None:
            self.on_stage(StageEvent(arm, stage, moment, step, self, dead))

    def step_hook(
        self,
        arm: str,
        stage: str,
        first_step: int,
        dead: torch.Tensor | None = None,
        then: Callable[[int, float], None] | None = None,
    ) -> Callable[[int, float], None] | None:
        """An ``on_step`` callback for training that starts at the arm's step ``first_step``:
        tells ``on_stage`` of each step, then calls ``then`` (None when neither is wanted)."""
        if self.on_stage is None:
            return then

        def on_step(n: int, loss: float) -> None:
            self.tell(arm, stage, "step", first_step + n, dead)
            if then is not None:
                then(n, loss)

        return on_step

    @property
    def predict_data(self) -> ConceptDataset:
        """The probe sentences the predictors read (:mod:`neuroplastic.core.halves`)."""
        assert self.probe_split is not None
        return self.probe_data.subset(self.probe_split.predict)

    @property
    def readout_split(self) -> ProbeSplit:
        """The validation sentences' two halves the per-layer probes use (``predict``: the
        half they are fitted on, ``truth``: the half they are scored on): disjoint from the
        probe sentences the ranking and the erasers are fitted on (:func:`_readability`)."""
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
        setup = _setup(config, store, progress, log, device)  # fails on bad settings first
        setup.on_stage = on_stage
        if main:
            store.write_config(config)
        base_ranking = _fine_tune_base(setup, log, base_from)
        if config.removal != "neurons":  # fitted on the base weights, before any stage needs it
            setup.erasures = _prepare_erasures(setup, log)
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
            naive = _naive_set(setup, neuron_sets["concept"])
            if config.removal != "neurons":
                setup.erasures = _naive_erasure(setup)
            held = HeldSets(setup, {**neuron_sets, NAIVE_ARM: naive})
            _retrain_arm(setup, NAIVE_ARM, held, log)
        if config.preempt:  # from the concept arm's predictions, made at its pruned stage
            preempted = _preempt_sets(setup, neuron_sets["concept"])
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


@distributed.rank_zero
def _base_neuron_sets(setup: Setup, ranking: Ranking | None = None) -> dict[str, NeuronSet]:
    """Every arm's set from the base ``ranking`` (as just computed), or, on resumption, from
    its disk copy (verified against the manifest; the same ranking to the bit)."""
    if ranking is None:
        ranking = setup.run.stage("concept", "base").ranking
    return _neuron_sets(setup, ranking)


@distributed.rank_zero
def _finish_run(setup: Setup, held: HeldSets, keep_base: bool = False) -> dict[str, Any]:
    summary = build_summary(setup, held, _process_counts(setup)).to_dict()
    atomic_write_json(setup.run.summary_path, summary)
    _write_sentence_activations(setup, held)  # while the stages' weights are still kept
    setup.store.release(keep={"base"} if keep_base else set())
    return summary


def _write_sentence_activations(setup: Setup, held: HeldSets) -> None:
    """For the report's neuron views (rank 0): the neurons it views in each arm
    (:func:`~neuroplastic.analysis.viewed.viewed_neurons`) on every token of their top
    sentences, at the arm's first and last stage, each from that stage's weights with the arm's
    removal held as it was then; written with the stage and listed in the manifest. A stage
    whose weights are gone (a run finished before this existed) gets none: its views show the
    top tokens alone."""
    run = setup.run
    loaded = {arm: ArmRun.load(run, arm) for arm in held.arms if run.stages(arm)}
    wanted = viewed_neurons(loaded)
    for arm, data in loaded.items():
        for stage in dict.fromkeys((data.first, data.last)):
            path = run.sentence_activations_path(arm, stage)
            owner = stage_owner(arm, stage)
            # the weights resumption keeps, else a --save-checkpoints copy (a finished run's)
            weights = next(
                (
                    p
                    for p in (run.weights_path(owner, stage), run.checkpoint_path(owner, stage))
                    if p.is_file()
                ),
                None,
            )
            if (path.is_file() and run.manifest.matches(path)) or weights is None:
                continue
            load_weights(setup.module, weights)
            setup.module.eval()
            neurons = held.local(arm, max(1, stage_round(stage)))
            hold = _removal(setup, arm, neurons).hold(setup.model) if stage != "base" else None
            sentences = {n: top_sentences(data, stage, *n) for n in wanted[arm]}
            try:
                union = sorted({s for chosen in sentences.values() for s in chosen})
                found = neuron_activations(setup.model, setup.probe_data, wanted[arm], union)
            finally:
                if hold is not None:
                    hold.remove()
            activations = {
                (layer, neuron, sentence): found[sentence][:, column]
                for column, ((layer, neuron), chosen) in enumerate(sentences.items())
                for sentence in chosen
            }
            setup.store.record([run.write_sentence_activations(arm, stage, activations)])


def _silent(*_: object) -> None:
    pass


# The size of CoNLL-2003's training split: the embedded corpus's "whole split"
# (--train-sentences 0), so the paper's recipe in epochs means the same number of steps.
CONLL2003_TRAIN_SENTENCES = 14_041


# -- set-up ------------------------------------------------------------------------------------
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


def _setup(
    config: ExperimentConfig, store: Checkpointer, progress: bool, log, device: str | None = None
) -> Setup:
    """``device``: this process's (one GPU per process when launched), else the config's."""
    # The model's own weights never depend on the seed (a tiny random model is always the same
    # one): a seed changes the head, the data order, dropout and the sentences sampled.
    device = device or config.device
    check_device(device)
    _check_processes(config)
    model = load_model(
        config.model, device=device, dtype=weights_dtype(config), device_map=config.device_map
    )
    _check_model_fits(config, model)
    if config.task == "lm" and not is_decoder(model):
        raise NeuroplasticError(
            f"the causal LM task needs a decoder model (GPT-2 family); {config.model} is an "
            "encoder. Use --task ner"
        )
    if config.mode == "regrow":
        check_can_regrow(model)
    if config.removal != "neurons":
        config.erasure_layers(int(model.cfg.n_layers))  # a layer the model lacks fails now
    corpus = load_corpus(
        config.dataset,
        n_train=config.train_sentences or CONLL2003_TRAIN_SENTENCES,
        n_validation=config.validation_sentences,
        n_probe=config.probe_sentences,
        seed=config.seed,
    )
    train, probe = _train_and_probe(corpus, config)
    validation = corpus.validation[: config.validation_sentences]
    if len(validation) < config.validation_sentences:
        log(
            f"note: --validation-sentences {config.validation_sentences} asks for more than "
            f"the {len(validation)} validation sentences of {config.dataset}; evaluating on "
            "all of them"
        )
    encode = partial(
        ConceptDataset,
        tokenizer=model.tokenizer,
        label_names=concept_labels(corpus),
        tag_names=corpus.tag_names,
        max_length=config.max_length,
    )
    train_data, validation_data, probe_data = encode(train), encode(validation), encode(probe)
    if config.batch_size > len(train_data):
        raise NeuroplasticError(
            f"--batch-size {config.batch_size} exceeds the {len(train_data)} training sentences: "
            f"each batch would repeat sentences; give at most {len(train_data)}"
        )
    for name, data in (("validation", validation_data), ("probe", probe_data)):
        data.label_id(config.concept)  # an unknown concept fails before any training
        if data.label_counts()[config.concept] == 0:
            cut = (
                f" within their first {config.max_length} tokens ({data.n_truncated} of them "
                "are longer and cut there: raise --max-length if the concept lies further on)"
                if data.n_truncated
                else ""
            )
            raise NeuroplasticError(
                f"concept {config.concept!r} has no tokens in the {name} sentences{cut}"
            )
        if data.n_truncated:
            log(
                f"note: {data.n_truncated} {name} sentences are longer than max_length="
                f"{config.max_length} tokens; their words past it are left out"
            )
    overlap = {
        "validation_seen_in_train": mention_overlap(train, validation),
        "probe_seen_in_train": mention_overlap(train, probe),
    }
    torch.manual_seed(config.seed)  # the head's initialisation
    module = TokenClassifier(model, len(train_data.tag_names)) if config.task == "ner" else model
    module.to(model_device(model))  # the head joins the model (its first device under a map)
    if distributed.is_main():
        tokens = [probe_data.token_strings(i) for i in range(len(probe_data))]
        _check_same_sentences(store.run, tokens, config.dataset)
        _check_same_data(
            store.run, {"train": train, "validation": validation, "probe": probe}, config.dataset
        )
        store.run.write_sentences(tokens)
        _write_token_embeddings(store.run, model, probe_data)
    base_steps, stage_steps = config.steps(len(train_data))
    relearned = relearn_data(train_data, config)  # refuses an empty retain set up front
    if relearned is not train_data:
        check_batch_split(config.batch_size)
    return Setup(
        config, store, module, model, train_data, validation_data, probe_data, overlap, progress,
        base_steps, stage_steps, distributed.replicate(module, device),
        split_probe(len(probe_data), config.seed), relearned,
    )  # fmt: skip


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


def _train_and_probe(
    corpus: NerCorpus, config: ExperimentConfig
) -> tuple[list[NerSentence], list[NerSentence]]:
    """Training sentences and probe sentences, never the same ones.

    A corpus with its own probe split (the embedded one: names the training never sees) gives
    the probe; otherwise both are drawn, by the seed, from disjoint parts of the train split.
    """
    if corpus.probe:
        train, probe = corpus.train[: config.train_sentences or None], corpus.probe
        if len(probe) < config.probe_sentences:
            raise NeuroplasticError(
                f"{corpus.name} has {len(probe)} probe sentences; --probe-sentences asks for "
                f"{config.probe_sentences}"
            )
        return train, probe[: config.probe_sentences]
    n_train = config.train_sentences or len(corpus.train) - config.probe_sentences
    needed = n_train + config.probe_sentences
    if n_train <= 0 or len(corpus.train) < needed:
        raise NeuroplasticError(
            f"the train split of {corpus.name} has {len(corpus.train)} sentences, but training "
            f"takes --train-sentences {n_train} and the probe (neuron "
            f"statistics) --probe-sentences {config.probe_sentences} others, {needed} in all. "
            "Lower them so that their sum is at most the split's size"
        )
    order = list(range(len(corpus.train)))
    random.Random(f"neuroplastic-sample-{config.seed}").shuffle(order)
    train = [corpus.train[i] for i in order[:n_train]]
    probe = [corpus.train[i] for i in order[n_train:needed]]
    return train, probe


def _token_embeddings(model: Any, data: ConceptDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input embeddings (float32, CPU) of every token in ``data``: ids, vectors."""
    token_ids = torch.tensor(sorted({t for e in data.encoded for t in e.token_ids}))
    with torch.no_grad():
        embeddings = model.W_E[token_ids.to(model.W_E.device)].detach().float().cpu()
    return token_ids, embeddings


def _write_token_embeddings(run: RunDir, model: Any, data: ConceptDataset) -> None:
    run.write_token_embeddings(*_token_embeddings(model, data))


def weights_dtype(config: ExperimentConfig) -> str:
    """The dtype the model's weights are held in: ``--dtype``, but float32 for float16, which
    trains in mixed precision (float16 compute under autocast, float32 master weights and
    optimizer state): AdamW's eps (1e-8) is 0 in float16, and a weight with a zero gradient
    would become NaN after one step."""
    return "float32" if config.dtype == "float16" else config.dtype


def _train_config(config: ExperimentConfig, retraining: bool = False) -> TrainConfig:
    """Base fine-tuning's optimizer settings, or retraining's (``relearn_lr`` if given)."""
    rate = (config.relearn_lr or config.learning_rate) if retraining else config.learning_rate
    return TrainConfig(
        rate,
        config.weight_decay,
        config.batch_size,
        config.warmup_fraction,
        group_by_length=config.group_by_length,
        autocast=torch.float16 if config.dtype == "float16" else None,
    )


# -- the method --------------------------------------------------------------------------------
def _fine_tune_base(setup: Setup, log, base_from: Sequence[str | Path] = ()) -> Ranking | None:
    """Fine-tune until the probe loss plateaus (or load a checkpoint, or a sibling run's base
    of the same base settings), then measure the base; returns its ranking (None when the base
    was done before: its ranking is on disk)."""
    config = setup.config
    if setup.main_store.done("concept", "base"):
        log("[base] already done; resuming")
        return None
    losses: list[float] = []
    shared = _shared(setup, base_from, "concept")
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
    return _finish_stage(setup, "concept", "base", 0, losses, None, [], log, base=base)


def _shared(setup: Setup, base_from: Sequence[str | Path], arm: str) -> SharedBase | None:
    if not base_from:
        return None
    return distributed.on_main(partial(find_shared_base, base_from, setup.config, arm))


def _train_to_plateau(setup: Setup, log=report_line) -> tuple[dict, list[float]]:
    """Train in chunks of ``plateau_every`` steps until the probe loss stops improving by
    ``plateau_tolerance`` (relative) for ``plateau_patience`` checks, at most ``base_steps``.

    The probe loss at every check is the fine-tuning curve; validation F1 is taken at the end
    only (``eval_every`` applies to retraining, where recovery is measured)."""
    config, cap = setup.config, setup.base_steps
    trainer = Trainer(
        setup.trainee, setup.loss_fn(), setup.train_data, cap, _train_config(config),
        seed=config.seed,
    )  # fmt: skip
    # Epochs are a fixed budget (the paper's recipe): no plateau stop.
    plateau_every = 0 if config.base_epochs else config.plateau_every
    chunk = plateau_every or cap
    history: list[list[float]] = []
    losses: list[float] = []
    best, stale, stopped = math.inf, 0, "cap"
    while trainer.step < cap:
        first = trainer.step
        losses += trainer.run(
            min(chunk, cap - first),
            on_step=setup.step_hook("concept", "base", first),
            progress=setup.progress,
            description=f"fine-tuning base model from step {first}",
        )
        if not plateau_every:
            continue
        # Rank 0's loss on every rank, so that all stop at the same check.
        loss = distributed.on_main(
            partial(mean_loss, setup.module, setup.loss_fn(), setup.probe_data)
        )
        history.append([trainer.step, loss])
        if loss < best * (1 - config.plateau_tolerance):
            best, stale = loss, 0
        else:
            stale += 1
        # A line per check: with stderr to a file, the only sign of life in base fine-tuning.
        log(
            f"[concept] base fine-tuning step {trainer.step:>5}  probe loss {loss:.4f}"
            + (f"  (no {config.plateau_tolerance:.0%} gain: {stale} of {config.plateau_patience})"
               if stale else "")
        )  # fmt: skip
        if stale >= config.plateau_patience:
            stopped = "plateau"
            break
    return {"steps": trainer.step, "stopped": stopped, "probe_loss": history}, losses


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
    steps = setup.main_store.marker("concept", "base")["base"]["steps"]
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


def naive_base_loss(setup: Setup):
    """The naive base's loss: blind to the concept's tokens and classes."""
    tags = concept_tag_ids(setup.train_data.tag_names, setup.config.concept)
    return concept_neutral_loss(setup.concept_id(), tags)


def _load_initial_weights(setup: Setup) -> None:
    """The weights base fine-tuning started from, into ``setup.module``: the model as loaded
    and the head as the seed initialised it (as :func:`_setup` made them)."""
    config = setup.config
    model = load_model(config.model, device="cpu", dtype=weights_dtype(config))
    torch.manual_seed(config.seed)  # the head's initialisation, as in _setup
    fresh = TokenClassifier(model, len(setup.train_data.tag_names))
    initial = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, parameter in setup.module.named_parameters():
            parameter.copy_(initial[name])
    del fresh, model, initial


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


def _neuron_sets(setup: Setup, ranking: Ranking) -> dict[str, NeuronSet]:
    config = setup.config
    concept = select(ranking, config)
    if config.removal != "neurons":
        # An erasure silences no neuron: every arm's set is empty, so that each neuron
        # analysis reads the whole model as alive; the erasure is in removals/{arm}.safetensors.
        sets = {
            arm: NeuronSet(concept.n_layers, concept.d_mlp, (), setup.erasures[arm].describe())
            for arm in ("concept", "random")
            if arm in config.arms
        }
        for arm, neurons in sets.items():
            neurons.save(setup.run.neurons_path(arm))
        return sets
    sets = {"concept": concept}
    draw = {
        "random": concept.random_matching,
        "random-global": concept.random_global,
        "random-any": concept.random_any,
    }.get(config.baseline)
    if draw is not None:
        try:
            sets["random"] = draw(seed=config.seed)
        except NeuroplasticError as error:
            # Known only once the base is ranked; a run's settings are fixed from its start.
            raise NeuroplasticError(
                f"{error}; give the changed settings a new --out (those of {setup.run.path} "
                "are fixed: its base is done)"
            ) from None
    for arm, neurons in sets.items():
        neurons.save(setup.run.neurons_path(arm))
    return sets


#: the salt of the validation sentences' hash split for the per-layer probes
READOUT_SALT = "readout"

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
    for arm in ("concept", "random", NAIVE_ARM):
        path = run.removal_path(arm)
        if path.is_file() and run.manifest.matches(path):
            erasures[arm] = LinearErasure.load(path)
    wanted = [arm for arm in config.arms if arm in ("concept", "random")]
    if all(arm in erasures for arm in wanted):
        return erasures
    if not run.weights_path("concept", "base").is_file():
        raise NeuroplasticError(
            f"{run.path}: the {config.removal} erasure the run held is missing or altered "
            f"({run.removal_path('concept')}) and the base weights it was fitted on are gone; "
            "rerun into a new --out"
        )
    store.restore("concept", "base", setup.module)
    setup.module.eval()  # no dropout in what the erasure is fitted on
    layers = config.erasure_layers(int(setup.model.cfg.n_layers))
    if "concept" not in erasures:
        erasures["concept"] = ERASURE_FITTERS[config.removal](
            setup.model, setup.probe_data, config.concept, layers, progress=setup.progress
        )
        _save_erasure(setup, "concept", erasures["concept"])
    if "random" in wanted and "random" not in erasures:
        erasures["random"] = fit_matched_control(
            setup.model, setup.probe_data, erasures["concept"], config.seed,
            progress=setup.progress,
        )  # fmt: skip
        _save_erasure(setup, "random", erasures["random"])
    for arm in wanted:
        log(f"[{arm}] removal: {erasures[arm].describe()}")
    return erasures


@distributed.rank_zero
def _naive_erasure(setup: Setup) -> dict[str, LinearErasure]:
    """The naive arm holds the concept arm's erasure, as fitted on the concept's base (rank 0)."""
    erasures = dict(setup.erasures)
    if NAIVE_ARM not in erasures:
        erasures[NAIVE_ARM] = erasures["concept"]
        _save_erasure(setup, NAIVE_ARM, erasures[NAIVE_ARM])
    return erasures


def _save_erasure(setup: Setup, arm: str, erasure: LinearErasure) -> None:
    path = setup.run.removal_path(arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    erasure.save(path)
    setup.store.record([path])


def _note_control(setup: Setup, neuron_sets: dict[str, NeuronSet], log) -> None:
    """Say so when the control is not a random draw (the complement) or overlaps the set."""
    if "random" not in neuron_sets or setup.config.removal != "neurons":
        return
    control, concept = neuron_sets["random"], neuron_sets["concept"]
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
def _preempt_sets(setup: Setup, concept: NeuronSet) -> dict[str, NeuronSet]:
    """The pre-empting arms' sets (:mod:`neuroplastic.experiment.preempt`), from the concept arm's
    predictions (rank 0)."""
    config, run = setup.config, setup.run
    # The oracle: what the concept arm (run first, on the same batches) realised.
    arm = ArmRun.load(run, "concept")
    first_round_last = round_stages(config.stages, 1)[-1]
    pruned, last = arm.stages["pruned"].ranking, arm.stages[first_round_last].ranking
    if config.preempt == "oracle":
        sets = preempt_sets(
            concept, realised_gain(pruned, last, concept), "oracle", config.preempt_count,
            config.seed,
        )  # fmt: skip
    else:
        path = run.predictions_path("concept")
        run.manifest.verify(path)  # the file the run wrote, not another
        sets = preempt_sets(
            concept, Predictions.load(path), config.preempt, config.preempt_count, config.seed
        )
        sets["preempt-oracle"] = oracle_set(
            concept, pruned, last, config.preempt_count, config.seed
        )
    for arm, neurons in sets.items():
        neurons.save(setup.run.neurons_path(arm))
    return sets


@distributed.rank_zero
def _one_shot_set(setup: Setup, held: HeldSets) -> NeuronSet:
    """The one-shot arm's set (rank 0): every neuron the concept arm holds after the last
    round the chase ran (each round adds to the last), saved as ``neurons/one-shot.json``."""
    rounds = rounds_run(setup.store, setup.config)
    union = held.local("concept", rounds)
    neurons = NeuronSet(
        union.n_layers,
        union.d_mlp,
        union.neurons,
        f"every neuron of the chase's {rounds} rounds, held from the base at once",
    )
    neurons.save(setup.run.neurons_path(ONE_SHOT_ARM))
    return neurons


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
            if arm != "concept":
                _retrain_round(setup, arm, round_, held(arm, round_), log, branch="concept")
        _retrain_round(setup, "concept", round_, held("concept", round_), log)


@distributed.rank_zero
def _round_sets(setup: Setup, held: HeldSets, arms: Sequence[str], round_: int) -> str | None:
    """Every arm's set for ``round_`` (rank 0), or why the chase stops (recorded)."""
    try:
        for arm in arms:
            held.local(arm, round_)
    except ControlCapacityError as error:
        # The concept's set of the round that will not run was saved with it: not a round.
        setup.run.neurons_path("concept", round_).unlink(missing_ok=True)
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
    setup.held = hold
    try:
        for stage in todo:
            rows: list[dict] = []
            losses: list[float] = []
            if stage != stages[0]:
                if config.schedule == "per-stage":
                    trainer.restart_schedule()
                first = offset + trainer.step
                evaluate_at_grid = _periodic_eval(setup, arm, stage, first, dead, rows)
                losses = trainer.run(
                    setup.stage_steps,
                    on_step=setup.step_hook(arm, stage, first, dead, evaluate_at_grid),
                    progress=setup.progress,
                    description=f"[{arm}] {stage}",
                )
            _finish_stage(
                setup, arm, stage, offset + trainer.step, losses, dead, rows, log,
                trainer_state=trainer.state_dict(),
                previous=_unless_base(every[every.index(stage) - 1]),
                predict=predict if stage == "pruned" else None,
                causal=causal if stage == stages[-1] else None,
            )  # fmt: skip
    finally:
        setup.held = None
        if hold is not None:
            hold.remove()


def _removal(setup: Setup, arm: str, neurons: NeuronSet) -> Removal:
    """What ``arm`` holds while it retrains and is evaluated: its ``neurons`` ablated, or, with
    ``--removal leace|direction``, its erasure."""
    if setup.config.removal == "neurons":
        return NeuronRemoval(neurons, setup.config.mode)
    return ErasureRemoval(setup.erasures[arm])


def _predicted(setup: Setup, arm: str) -> bool:
    """Whether ``arm``'s removal is predicted: the neuron predictors need removed neurons."""
    return arm in PREDICTED_ARMS and setup.config.removal == "neurons"


@distributed.rank_zero
def _processes(setup: Setup, arm: str, stage: str) -> int:
    """How many processes computed ``stage`` (its marker; rank 0)."""
    return int(setup.store.marker(stage_owner(arm, stage), stage).get("processes", 1))


def _unless_base(stage: str) -> str | None:
    """The stage whose weights a new stage's save may drop: never the base's."""
    return None if stage == "base" else stage


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
        if arm == "concept":
            last = round_stages(config.stages, round_ - 1)[-1]
            neurons = next_concept_set(
                self.local("concept", round_ - 1), run.stage("concept", last).ranking, config
            )
        else:
            # The control branches from the concept model round r-1 left: it holds that
            # model's neurons plus as many random survivors as the concept arm adds.
            neurons = next_random_set(
                self.local("concept", round_ - 1),
                self.local("concept", round_ - 1),
                self.local("concept", round_),
                seed=config.seed + round_,
                per_layer=config.baseline == "random",
            )
        neurons.save(run.neurons_path(arm, round_))
        self._local[arm, round_] = neurons
        return neurons


#: the arms whose removal is predicted: the concept's, and its paired control, where nothing
#: concept-specific was removed, so that every predictor's score there is its null
PREDICTED_ARMS = ("concept", "random")


#: the arms whose predictors also get a causal truth (ablating each one's picks in the
#: retrained model): the concept arm, where there is something to have taken over
CAUSAL_ARMS = ("concept",)


def _has_causal_truth(setup: Setup, arm: str, stage: str) -> bool:
    """Whether ``stage`` is where ``arm``'s causal truth is taken: the last stage of round 1
    of a predicted arm that retrained."""
    last = round_stages(setup.config.stages, 1)[-1]
    return arm in CAUSAL_ARMS and _predicted(setup, arm) and stage == last and last != "pruned"


def _causal_truth(
    setup: Setup, arm: str, neurons: NeuronSet, stage: str, halves: dict[str, NeuronStats]
) -> Path:
    """On rank 0: the causal truth (:mod:`neuroplastic.analysis.causal`) of ``arm``'s predictions,
    in the model as it is now (the removal held), written with ``stage``; returns the file."""
    config, run = setup.config, setup.run
    last = Ranking.from_stats(halves["truth"], config.concept, config.method)
    truth = ground_truth(_half_ranking(setup, arm, "pruned", "truth"), last, neurons)
    predictions = Predictions.load(run.predictions_path(arm))
    sets = candidate_sets(predictions.scores, truth, config.seed)
    result = damage(
        setup.module, setup.model, setup.validation_data, config.task, config.concept, sets,
        progress=setup.progress,
    )  # fmt: skip
    path = run.stage_dir(arm, stage) / CAUSAL_FILE
    atomic_write_json(path, result)
    return path


@distributed.rank_zero
def _predict_at_base(setup: Setup, neurons: NeuronSet) -> Predictions:
    """Base saliency, concept similarity (the base model's own input embeddings, as the report
    uses) and co-activation with ``neurons``: on the base weights, no ablation held."""
    config, split = setup.config, setup.probe_split
    base = setup.run.stage("concept", "base")  # verified against the manifest
    embeddings = TokenEmbeddings.from_vectors(*_token_embeddings(setup.model, setup.probe_data))
    # Every predictor reads the predict half only: its saliency, its share of the base top
    # tokens (each entry records its sentence), its sentences for co-activation.
    return predict_at_base(
        setup.module, setup.predict_data, config.concept,
        _half_ranking(setup, "concept", "base", "predict"), base.stats, neurons, embeddings,
        progress=setup.progress, readable=split.in_predict(base.stats.top_sentence),
    )  # fmt: skip


def _half_ranking(setup: Setup, arm: str, stage: str, half: str) -> Ranking:
    """A stage's ranking on one half of the probe sentences (as saved with the stage)."""
    halves = setup.run.stage_halves(arm, stage)
    if halves is None:
        raise NeuroplasticError(
            f"{setup.run.path}: stage {stage} of the {arm} arm was made before the probe "
            "sentences were split in halves (predictors / ground truths); rerun into a new --out"
        )
    return Ranking.from_stats(halves[half], setup.config.concept, setup.config.method)


def _predict_at_pruned(
    setup: Setup, neurons: NeuronSet, at_base: Predictions, ranking: Ranking
) -> Predictions:
    """``at_base`` with the predictors read at the pruned stage (``ranking``: on the predict
    half of the probe sentences): the model holds the removal as retraining will (hooks in
    ``hold`` mode, pruned weights in ``regrow``)."""
    config = setup.config
    at_pruned = predict_at_pruned(
        setup.module, setup.predict_data, config.concept, ranking, neurons, seed=config.seed,
        hold=config.mode == "hold", progress=setup.progress,
    )  # fmt: skip
    return at_base.merged(at_pruned)


def _finish_stage(
    setup: Setup,
    arm: str,
    stage: str,
    step: int,
    losses: list[float],
    dead: torch.Tensor | None,
    rows: list[dict],
    log,
    base: dict | None = None,
    trainer_state: dict | None = None,
    previous: str | None = None,
    predict: Callable[[Ranking], Predictions] | None = None,
    causal: Callable[[str, dict[str, NeuronStats]], Path] | None = None,
) -> Ranking:
    """Evaluate, take statistics and ranking on the probe sentences, write the artifacts, and
    mark the stage done; returns the stage's ranking (rank 0's, on every rank). Every rank
    evaluates (checking its own replica's held neurons) and takes its share of the statistics;
    rank 0 writes. ``predict``: at the pruned stage, a
    function of the stage's ranking giving the predictions saved with it (rank 0 computes
    them, with the model as retraining will start from it). ``causal``: at the last stage, a
    function of the stage and its halves' statistics writing the causal truth
    (:mod:`neuroplastic.analysis.causal`, rank 0, the model as retraining left it)."""
    config = setup.config
    setup.tell(arm, stage, "trained", step, dead)
    tap = _readability_tap(setup)
    evaluation = _validate(setup, dead, progress=setup.progress, taps=[tap] if tap else ())
    stats, halves = _probe_stats(setup)
    readable, probes = _readability(setup, tap)
    row = {
        "arm": arm,
        "stage": stage,
        "step": step,
        **evaluation.scores,
        "train_loss": sum(losses) / len(losses) if losses else None,
        "readable": readable,
        "probes": probes,
    }
    marker: dict[str, Any] = {"rows": [*rows, row]}
    if base is not None:
        marker["base"] = base
    if distributed.world_size() > 1:  # (one process: markers as before launchers existed)
        marker["processes"] = distributed.world_size()

    def write() -> Ranking:
        # The concept arm's base is every arm's but the naive one's (its own).
        arms = [a for a in config.arms if stage_owner(a, stage) == arm]
        ranking, artifacts = _write_stage_files(setup, arms, stage, stats, halves)
        if predict is not None:
            path = setup.run.predictions_path(arm)
            ranking = Ranking.from_stats(halves["predict"], config.concept, config.method)
            predict(ranking).save(path)
            artifacts.append(path)  # listed in the manifest before the stage is marked done
        if causal is not None:
            artifacts.append(causal(stage, halves))
        setup.store.save(arm, stage, setup.module, marker, trainer_state, previous, artifacts)
        setup.store.write_metrics(config.arms, config.stages, config.rounds)
        return ranking

    ranking = distributed.on_main(write)
    log(_describe(row))
    setup.tell(arm, stage, "finished", step, dead)
    return ranking


def _readability_tap(setup: Setup) -> ResidualTap | None:
    """A tap keeping every layer's residual stream and MLP output from the stage's evaluation,
    so the probes need no passes of their own. None (the probes then run passes of their own,
    in groups of layers) under a launcher, where a process's passes see only its share, and
    when every layer's activations at both points would not fit in
    :data:`~neuroplastic.core.probes.PROBE_MEMORY`."""
    if distributed.world_size() > 1:
        return None
    layers = range(int(setup.model.cfg.n_layers))
    if layers_that_fit(setup.model, (setup.validation_data,), len(POINTS)) < len(layers):
        return None
    return ResidualTap(layers, len(setup.validation_data), tuple(POINTS))


@distributed.rank_zero
def _readability(setup: Setup, tap: ResidualTap | None) -> tuple[dict[str, float], dict[str, Any]]:
    """Where the concept is linearly readable at this stage, whatever the removal (rank 0; no
    random numbers drawn, so training is the same with it). Per point (:data:`POINTS`: the
    residual stream after block l, and block l's MLP output) and layer, a logistic-regression
    probe for the concept, with the arm's removal held, fitted on one half of the validation
    sentences and scored on the other (:attr:`Setup.readout_split`): never on the probe
    sentences the ranking and the erasers were fitted on, whose class means an eraser
    equalised (a probe fitted there reads chance by construction).

    Returns the residual stream's raw AUCs per layer (``readable``, as runs have always
    recorded; below 0.5 the sign flipped) and every reading (``probes``: per point and layer,
    ``auc``, ``sign_free`` = max(auc, 1 - auc), and the AUC's 95% interval ``low`` / ``high``,
    with the split). ``tap``: the validation sentences' activations as the stage's evaluation
    left them (else passes of its own)."""
    concept, split = setup.config.concept, setup.readout_split
    if tap is not None:
        concept_id = setup.validation_data.label_id(concept)
        readings = {
            point: probe_readings_of(
                tap.residuals(point, split.predict),
                tap.residuals(point, split.truth),
                concept_id,
                concept=concept,
            )
            for point in POINTS
        }
    else:
        setup.module.eval()
        readings = probe_readings(
            setup.model,
            setup.validation_data.subset(split.predict),
            setup.validation_data.subset(split.truth),
            concept,
            range(int(setup.model.cfg.n_layers)),
        )
    probes: dict[str, Any] = {
        point: {str(layer): value for layer, value in per_layer.items()}
        for point, per_layer in readings.items()
    }
    probes["split"] = {
        "fit": "validation, hash half 0",
        "score": "validation, hash half 1",
        "n_fit": len(split.predict),
        "n_score": len(split.truth),
    }
    readable = {layer: value["auc"] for layer, value in probes["resid_post"].items()}
    return readable, probes


def _recompute_stage_files(setup: Setup, stages: list[Recompute]) -> None:
    """Take the statistics of stages whose files could not be read again, from the weights
    saved after each (with the arm's neurons of the stage's round held, as when it ran): no
    training is repeated. ``stages`` lists the base first, whose ranking the neuron sets come
    from."""
    held = None
    for each in stages:
        _load_on_main(setup.module, each.weights)
        setup.module.eval()  # as after training: no dropout in the statistics
        hold = None
        if each.stage != "base" and held is None:
            held = _held_sets(setup)
        if each.stage != "base":
            neurons = held(each.arm, stage_round(each.stage))
            hold = _removal(setup, each.arm, neurons).hold(setup.model)
        try:
            stats, halves = _probe_stats(setup)
            _rewrite_stage(setup, each, stats, halves)
            if _has_causal_truth(setup, each.arm, each.stage):  # with the removal still held
                causal = partial(_causal_truth, setup, each.arm, held(each.arm, 1))
                _record(setup, causal, each.stage, halves)
        finally:
            if hold is not None:
                hold.remove()
        if each.stage == "pruned" and _predicted(setup, each.arm):
            _repredict(setup, each, held(each.arm, 1))


@distributed.rank_zero
def _record(setup: Setup, write: Callable[..., Path], *args: Any) -> None:
    """Write a file (``write(*args)`` returns its path) and list it in the manifest."""
    setup.store.record([write(*args)])


def _held_sets(setup: Setup) -> HeldSets:
    """Every arm's sets, as the run chose them (the base ranking's, the predictions')."""
    neuron_sets = _base_neuron_sets(setup)
    one_shot = setup.run.neurons_path(ONE_SHOT_ARM)
    if setup.config.rounds > 1 and distributed.on_main(one_shot.is_file):
        neuron_sets[ONE_SHOT_ARM] = setup.main_run.neurons(ONE_SHOT_ARM)
    if setup.config.naive:
        neuron_sets[NAIVE_ARM] = _naive_set(setup, neuron_sets["concept"])
    if setup.config.preempt and distributed.on_main(
        lambda: setup.run.predictions_path("concept").is_file()
    ):
        neuron_sets |= _preempt_sets(setup, neuron_sets["concept"])
    return HeldSets(setup, neuron_sets)


def _repredict(setup: Setup, each: Recompute, neurons: NeuronSet) -> None:
    """The predictions saved with a recomputed pruned stage, computed again as the run did:
    on the base weights (kept until the run is complete), then on the weights after the stage
    with the removal held. The same numbers, so a damaged file comes back as it was."""
    base = setup.main_run.saved_weights("concept", "base")
    if base is None:
        return  # a complete run keeps no weights: recovery refused it before any of this
    _load_on_main(setup.module, base)
    at_base = _predict_at_base(setup, neurons)
    _load_on_main(setup.module, each.weights)
    hold = _removal(setup, each.arm, neurons).hold(setup.model)
    try:

        def write() -> None:
            ranking = _half_ranking(setup, each.arm, "pruned", "predict")  # as just rewritten
            path = setup.run.predictions_path(each.arm)
            _predict_at_pruned(setup, neurons, at_base, ranking).save(path)
            setup.store.record([path])

        distributed.on_main(write)
    finally:
        if hold is not None:
            hold.remove()


@distributed.rank_zero
def _rewrite_stage(
    setup: Setup, each: Recompute, stats: NeuronStats, halves: dict[str, NeuronStats]
) -> None:
    setup.store.record(_write_stage_files(setup, (each.arm,), each.stage, stats, halves)[1])


def _probe_stats(
    setup: Setup, taps: Sequence[ResidualTap] = ()
) -> tuple[NeuronStats, dict[str, NeuronStats]]:
    """Neuron statistics of the model as it is, on each half of the probe sentences, and on
    all of them (the two merged: exactly what one pass over all of them gives); ``taps`` keep
    the residual stream of the same passes."""
    assert setup.probe_split is not None
    halves = {
        half: collect_stats(
            setup.model,
            setup.probe_data,
            batch_size=32,
            top_k=setup.config.top_k_tokens,
            indices=getattr(setup.probe_split, half),
            progress=setup.progress,
            taps=taps,
        )  # fmt: skip
        for half in HALVES
    }
    return halves["predict"].merge(halves["truth"]), halves


def _write_stage_files(
    setup: Setup,
    arms: Sequence[str],
    stage: str,
    stats: NeuronStats,
    halves: dict[str, NeuronStats],
) -> tuple[Ranking, list[Path]]:
    """The stage's ranking, and the paths of its files written for each of ``arms``."""
    config = setup.config
    ranking = Ranking.from_stats(stats, config.concept, config.method)
    frame = top_tokens_frame(stats, setup.model.tokenizer)
    paths = [
        path
        for arm in arms
        for path in setup.run.write_stage(arm, stage, ranking, stats, frame, halves)
    ]
    return ranking, paths


def _load_on_main(module: torch.nn.Module, path: Path) -> None:
    """Weights from a file rank 0 reads, into every rank's ``module``."""
    distributed.on_main(partial(load_weights, module, path))
    distributed.broadcast_parameters(module)


def _validate(
    setup: Setup, dead: torch.Tensor | None, progress: bool, taps: Sequence[ResidualTap] = ()
):
    """Scores on the validation sentences, checking that the removal's hooks are all still held
    and that held neurons are still exactly zero; ``taps`` keep the residual stream."""
    if setup.held is not None and not setup.held.active:
        raise NeuroplasticError(
            "the removal's hooks are no longer all held (something removed them during "
            "retraining): the run stops rather than measure an unremoved model"
        )
    return evaluate(
        setup.module,
        setup.validation_data,
        setup.config.task,
        setup.config.concept,
        dead_neurons=dead,
        progress=progress,
        taps=taps,
    )


def _periodic_eval(
    setup: Setup, arm: str, stage: str, first_step: int, dead: torch.Tensor | None, rows: list
):
    """An ``on_step`` callback evaluating a retraining stage that starts at step ``first_step``
    at the steps of its grid (:meth:`ExperimentConfig.inner_evaluations`: dense in a round's
    first stage by default); its rows are named ``stage@n`` (n steps into the stage) and kept
    with the stage's own row."""
    first_of_round = stage_key(stage)[1] == 1
    grid = set(setup.config.inner_evaluations(setup.stage_steps, first_of_round))

    def on_step(n: int, loss: float) -> None:
        if n in grid:
            evaluation = _validate(setup, dead, progress=False)
            rows.append(
                {
                    "arm": arm,
                    "stage": f"{stage}@{n}",
                    "step": first_step + n,
                    **evaluation.scores,
                    "train_loss": loss,
                }
            )

    return on_step


def _describe(row: dict) -> str:
    if "f1" in row:
        scores = " ".join(f"{k}={v:.3f}" for k, v in row["f1"].items())
        return f"[{row['arm']}] {row['stage']:<10} step {row['step']:>5}  F1 {scores}"
    losses = " ".join(f"{k}={v:.3f}" for k, v in row["lm_loss"].items())
    return f"[{row['arm']}] {row['stage']:<10} step {row['step']:>5}  LM loss {losses}"


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
