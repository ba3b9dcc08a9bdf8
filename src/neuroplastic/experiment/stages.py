"""A stage's end and its files: evaluation (checking the removal is still held), neuron
statistics and ranking on the probe sentences' halves, where the concept is readable, the
stage's files and marker; and the neuron views' sentence activations once the run is done."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from neuroplastic import distributed
from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.predict import Predictions
from neuroplastic.analysis.viewed import top_sentences, viewed_neurons
from neuroplastic.core.activations import neuron_activations
from neuroplastic.core.halves import HALVES
from neuroplastic.core.head_reading import HeadScores
from neuroplastic.core.held_hooks import HeldHooks
from neuroplastic.core.probes import (
    POINTS,
    Probe,
    ResidualTap,
    layers_that_fit,
    point_readings,
    readings_and_probes,
)
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import NeuronStats, collect_stats
from neuroplastic.core.training import evaluate
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.removals import _removal
from neuroplastic.experiment.setup import HeldSets, Setup
from neuroplastic.run_format import FIXED_SUFFIX, HEAD_READING
from neuroplastic.store.checkpoint import load_weights
from neuroplastic.store.rundir import stage_key, stage_owner, stage_round, top_tokens_frame


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
    held: HeldHooks | None = None,
) -> Ranking:
    """Evaluate, take statistics and ranking on the probe sentences, write the artifacts, and
    mark the stage done; returns the stage's ranking (rank 0's, on every rank). Every rank
    evaluates (checking its own replica's held neurons) and takes its share of the statistics;
    rank 0 writes. ``predict``: at the pruned stage, a
    function of the stage's ranking giving the predictions saved with it (rank 0 computes
    them, with the model as retraining will start from it). ``causal``: at the last stage, a
    function of the stage and its halves' statistics writing the causal truth
    (:mod:`neuroplastic.analysis.causal`, rank 0, the model as retraining left it).
    ``held``: the hooks of the removal the arm holds, checked still held (None: none held)."""
    config = setup.config
    setup.tell(arm, stage, "trained", step, dead, held)
    tap = _readability_tap(setup)
    # (under a launcher each process evaluates a share of the sentences: no head reading)
    head = (
        HeadScores(setup.validation_data.tag_names, config.concept)
        if config.task == "ner" and distributed.world_size() == 1
        else None
    )
    evaluation = _validate(
        setup, held, dead, progress=setup.progress, taps=[tap] if tap else (), head=head
    )
    stats, halves = _probe_stats(setup)
    readable, probes, fitted = _readability(setup, tap, arm, stage, head)
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
    if fitted:  # the base's: every later stage of the arms sharing it reads them unchanged
        marker[FIXED_PROBES] = fitted
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
    setup.tell(arm, stage, "finished", step, dead, held)
    return ranking


def _validate(
    setup: Setup,
    held: HeldHooks | None,
    dead: torch.Tensor | None,
    progress: bool,
    taps: Sequence[ResidualTap] = (),
    head: HeadScores | None = None,
):
    """Scores on the validation sentences, checking that the removal's hooks (``held``) are all
    still held and that held neurons are still exactly zero; ``taps`` keep the residual stream,
    ``head`` the tagging head's own score for the concept."""
    if held is not None and not held.active:
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
        head=head,
    )


def _periodic_eval(
    setup: Setup,
    arm: str,
    stage: str,
    first_step: int,
    dead: torch.Tensor | None,
    rows: list,
    held: HeldHooks | None = None,
):
    """An ``on_step`` callback evaluating a retraining stage that starts at step ``first_step``
    at the steps of its grid (:meth:`ExperimentConfig.inner_evaluations`: dense in a round's
    first stage by default); its rows are named ``stage@n`` (n steps into the stage) and kept
    with the stage's own row."""
    first_of_round = stage_key(stage)[1] == 1
    grid = set(setup.config.inner_evaluations(setup.stage_steps, first_of_round))

    def on_step(n: int, loss: float) -> None:
        if n in grid:
            evaluation = _validate(setup, held, dead, progress=False)
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
            setup.rank_data,
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
    return ResidualTap(
        layers, len(setup.validation_data), tuple(POINTS), predicting=setup.config.task == "lm"
    )


#: the base stage's marker key holding its probes, per point and layer (:class:`Probe` as
#: plain floats), which every later stage scores unchanged (``<point>_fixed`` readings)
FIXED_PROBES = "fixed_probes"


@distributed.rank_zero
def _readability(
    setup: Setup, tap: ResidualTap | None, arm: str, stage: str, head: HeadScores | None = None
) -> tuple[dict[str, float], dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Where the concept is linearly readable at this stage, whatever the removal (rank 0; no
    random numbers drawn, so training is the same with it). Per point (:data:`POINTS`: the
    residual stream after block l, and block l's MLP output) and layer, a logistic-regression
    probe for the concept, with the arm's removal held, fitted on one half of the validation
    sentences and scored on the other (:attr:`Setup.readout_split`): never on the probe
    sentences the ranking and the erasers were fitted on, whose class means an eraser
    equalised (a probe fitted there reads chance by construction). Under ``--task lm`` each
    token is labelled by the next one, as the ranking reads them: does the stream at a position
    still say that a place name comes next?

    After the base, the arm's base stage's probes (its marker's :data:`FIXED_PROBES`; none
    where the base was recorded before they were kept) are read unchanged on the same half as
    ``<point>_fixed``: is the concept still where the base model wrote it? At the base stage
    the stage's own probes are those, and are read as such.

    Returns the residual stream's raw AUCs per layer (``readable``, as runs have always
    recorded; below 0.5 the sign flipped), every reading (``probes``: per point and layer,
    ``auc``, ``sign_free`` = max(auc, 1 - auc), and the AUC's 95% interval ``low`` / ``high``,
    with the split) and, at the base stage, the probes fitted, as plain floats (else empty).
    ``tap``: the validation sentences' activations as the stage's evaluation left them (else
    passes of its own). ``head``: the tagging head's own scores from that evaluation, read on
    the same half into ``probes["head"]`` (keyed by the last layer, which the head reads): does
    the head still order the concept's tokens above the others, whatever its decisions?"""
    concept, split = setup.config.concept, setup.readout_split
    base = stage == "base"
    # rank 0 alone reads the run directory (a launcher's other machines may have none)
    held = None if base else setup.store.marker(stage_owner(arm, "base"), "base")
    fixed = _probes_from_record(held[FIXED_PROBES]) if held and FIXED_PROBES in held else None
    if tap is not None:
        concept_id = setup.validation_data.label_id(concept)
        readings, fitted = point_readings(
            {point: tap.residuals(point, split.predict) for point in POINTS},
            {point: tap.residuals(point, split.truth) for point in POINTS},
            concept_id,
            fixed,
            concept=concept,
        )
    else:
        setup.module.eval()
        data = setup.validation_data
        data = data.predicting() if setup.config.task == "lm" else data  # as the tap labels
        readings, fitted = readings_and_probes(
            setup.model,
            data.subset(split.predict),
            data.subset(split.truth),
            concept,
            range(int(setup.model.cfg.n_layers)),
            fixed=fixed,
        )
    if base:  # its own probes are the ones held fixed later
        for point in POINTS:
            readings[point + FIXED_SUFFIX] = readings[point]
    probes: dict[str, Any] = {
        point: {str(layer): value for layer, value in per_layer.items()}
        for point, per_layer in readings.items()
    }
    if head is not None:
        last = str(int(setup.model.cfg.n_layers) - 1)
        concept_id = setup.validation_data.label_id(concept)
        probes[HEAD_READING] = {last: head.reading(split.truth, concept_id)}
    probes["split"] = {
        "fit": "validation, hash half 0",
        "score": "validation, hash half 1",
        "n_fit": len(split.predict),
        "n_score": len(split.truth),
    }
    readable = {layer: value["auc"] for layer, value in probes["resid_post"].items()}
    record = {
        point: {str(layer): probe.to_list() for layer, probe in per_layer.items()}
        for point, per_layer in (fitted.items() if base else ())
    }
    return readable, probes, record


def _probes_from_record(held: dict[str, dict[str, list[float]]]) -> dict[str, dict[int, Probe]]:
    return {
        point: {int(layer): Probe.from_list(values) for layer, values in per_layer.items()}
        for point, per_layer in held.items()
    }


def _load_on_main(module: torch.nn.Module, path: Path) -> None:
    """Weights from a file rank 0 reads, into every rank's ``module``."""
    distributed.on_main(partial(load_weights, module, path))
    distributed.broadcast_parameters(module)


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
