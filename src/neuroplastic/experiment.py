"""The relearning experiment, top to bottom: fine-tune, rank, ablate, retrain in stages, trace.

    base ──► statistics + ranking ──► neuron set ──► for each arm (concept, random):
                                                       pruned ──► retrain-1 ──► ... retrain-S
                                                       (evaluate + statistics + ranking each)

Every completed stage leaves a marker with its metrics and the weights after it, so a rerun of
the same command resumes after the last completed stage and ends with the same summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from neuroplastic.ablation import Ablation, prune_weights
from neuroplastic.config import ExperimentConfig
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from neuroplastic.models import is_decoder, load_model
from neuroplastic.neurons import NeuronSet
from neuroplastic.ranking import Ranking
from neuroplastic.rundir import RunDir, stage_names, top_tokens_frame
from neuroplastic.stats import collect_stats
from neuroplastic.training import (
    TokenClassifier,
    TrainConfig,
    evaluate,
    lm_loss,
    tagging_loss,
    train,
)


@dataclass
class Setup:
    """What every stage needs: the model (with head), the data, and where results go."""

    config: ExperimentConfig
    run: RunDir
    module: torch.nn.Module
    model: Any
    train_data: ConceptDataset
    validation_data: ConceptDataset
    probe_data: ConceptDataset  # the sentences neuron statistics and rankings are taken on
    progress: bool

    def loss_fn(self):
        return tagging_loss if self.config.task == "ner" else lm_loss


def run_experiment(
    config: ExperimentConfig, out: str | Path, progress: bool = True, log=print
) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out``; returns the summary."""
    run = RunDir(out)
    _check_existing(run, config)
    setup = _setup(config, run, progress, log)  # fails on bad settings before anything is written
    atomic_write_json(run.config_path, config.to_dict())
    base = _base_stage(setup, log)
    ranking = Ranking.from_frame(
        _read_ranking(run, "concept", "base"), config.concept, config.method
    )
    neuron_sets = _neuron_sets(setup, ranking)
    for arm, neurons in neuron_sets.items():
        _run_arm(setup, arm, neurons, base, log)
    summary = _summary(setup, neuron_sets)
    atomic_write_json(run.summary_path, summary)
    return summary


# -- set-up ------------------------------------------------------------------------------------
def _check_existing(run: RunDir, config: ExperimentConfig) -> None:
    # A crash mid-write leaves only a temporary file: sweep them before resuming.
    if run.path.is_dir():
        for leftover in run.path.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)
    if run.config_path.is_file():
        existing = ExperimentConfig.from_dict(run.config(), source=str(run.config_path))
        differences = config.differences(existing)
        if differences:
            raise NeuroplasticError(
                f"{run.path} holds a run with a different config; use another --out, or the "
                "same settings to resume. Differences: " + "; ".join(differences)
            )


def _setup(config: ExperimentConfig, run: RunDir, progress: bool, log) -> Setup:
    model = load_model(config.model, device=config.device, seed=config.seed)
    if config.task == "lm" and not is_decoder(model):
        raise NeuroplasticError(
            f"the causal LM task needs a decoder model (GPT-2 family); {config.model} is an "
            "encoder. Use --task ner"
        )
    corpus = load_corpus(
        config.dataset,
        n_train=config.train_sentences + config.probe_sentences,
        n_validation=config.validation_sentences,
        seed=config.seed,
    )
    encode = partial(encode_split, corpus, model.tokenizer, max_length=config.max_length)
    train_data = encode("train", limit=config.train_sentences)
    validation_data = encode("validation", limit=config.validation_sentences)
    # Neurons are ranked on sentences the F1 is not measured on (no selection bias); they come
    # after the training slice when the split is long enough, else from its end.
    probe_start = min(config.train_sentences, max(0, len(corpus.train) - config.probe_sentences))
    probe_data = encode("train", limit=config.probe_sentences, start=probe_start)
    for name, data in (("validation", validation_data), ("probe", probe_data)):
        data.label_id(config.concept)  # an unknown concept fails before any training
        if data.label_counts()[config.concept] == 0:
            raise NeuroplasticError(
                f"concept {config.concept!r} has no tokens in the {name} sentences"
            )
        if data.n_truncated:
            log(
                f"note: {data.n_truncated} {name} sentences are longer than max_length="
                f"{config.max_length} tokens; their words past it are left out"
            )
    torch.manual_seed(config.seed)
    module = TokenClassifier(model, len(train_data.tag_names)) if config.task == "ner" else model
    module.to(config.device)
    run.write_sentences([probe_data.token_strings(i) for i in range(len(probe_data))])
    _write_token_embeddings(run, model, probe_data)
    return Setup(config, run, module, model, train_data, validation_data, probe_data, progress)


def _write_token_embeddings(run: RunDir, model: Any, data: ConceptDataset) -> None:
    token_ids = torch.tensor(sorted({t for e in data.encoded for t in e.token_ids}))
    with torch.no_grad():
        embeddings = model.W_E[token_ids.to(model.W_E.device)].detach().float().cpu()
    run.write_token_embeddings(token_ids, embeddings)


def _train_config(config: ExperimentConfig) -> TrainConfig:
    return TrainConfig(
        config.learning_rate, config.weight_decay, config.batch_size, config.warmup_fraction
    )


# -- stages ------------------------------------------------------------------------------------
def _marker(run: RunDir, arm: str, stage: str) -> Path:
    return run.state_dir / arm / f"{stage}.json"


def _weights(run: RunDir, arm: str, stage: str) -> Path:
    return run.state_dir / arm / f"{stage}.safetensors"


def _save_weights(setup: Setup, arm: str, stage: str) -> None:
    # named_parameters() lists each tensor once (a bridge's state_dict repeats every alias);
    # clone because some are views of one storage (GPT-2's q/k/v split of c_attn).
    state = {k: v.detach().cpu().clone().contiguous() for k, v in setup.module.named_parameters()}
    data = save(state)
    atomic_write_bytes(_weights(setup.run, arm, stage), data)
    if setup.config.save_checkpoints:
        atomic_write_bytes(setup.run.checkpoint_path(arm, stage), data)


def _load_weights(setup: Setup, path: Path) -> None:
    if not path.is_file():
        raise NeuroplasticError(f"checkpoint not found: {path}")
    state = load_file(str(path))
    parameters = dict(setup.module.named_parameters())
    missing = sorted(set(parameters) - set(state))
    unexpected = sorted(set(state) - set(parameters))
    wrong = [k for k in set(state) & set(parameters) if state[k].shape != parameters[k].shape]
    if missing or unexpected or wrong:
        raise NeuroplasticError(
            f"{path} does not fit this model and head: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(wrong)} mis-shaped tensors "
            f"(e.g. {(missing or unexpected or wrong)[:2]})"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name])


def _finish_stage(
    setup: Setup,
    arm: str,
    stage: str,
    step: int,
    losses: list[float],
    dead: torch.Tensor | None,
    extra_rows: list[dict],
    log,
) -> dict:
    """Evaluate, take statistics and ranking on the probe sentences, write artifacts, and mark
    the stage done."""
    config = setup.config
    evaluation = _validate(setup, dead, progress=setup.progress)
    stats = collect_stats(
        setup.model,
        setup.probe_data,
        batch_size=32,
        top_k=config.top_k_tokens,
        progress=setup.progress,
    )
    ranking = Ranking.from_stats(stats, config.concept, config.method)
    frame = top_tokens_frame(stats, setup.model.tokenizer)
    arms = config.arms if stage == "base" else (arm,)
    for each in arms:
        setup.run.write_stage(each, stage, ranking, stats, frame)
    row = {
        "arm": arm,
        "stage": stage,
        "step": step,
        **evaluation.scores,
        "train_loss": sum(losses) / len(losses) if losses else None,
    }
    _save_weights(setup, arm, stage)
    atomic_write_json(_marker(setup.run, arm, stage), {"rows": [*extra_rows, row]})
    _rewrite_metrics(setup)
    log(_describe(row))
    return row


def _validate(setup: Setup, dead: torch.Tensor | None, progress: bool):
    """Scores on the validation sentences, checking that held neurons are still exactly zero."""
    return evaluate(
        setup.module,
        setup.validation_data,
        setup.config.task,
        setup.config.concept,
        stats_top_k=None,
        dead_neurons=dead,
        progress=progress,
    )


def _describe(row: dict) -> str:
    if "f1" in row:
        scores = " ".join(f"{k}={v:.3f}" for k, v in row["f1"].items())
        return f"[{row['arm']}] {row['stage']:<10} step {row['step']:>5}  F1 {scores}"
    losses = " ".join(f"{k}={v:.3f}" for k, v in row["lm_loss"].items())
    return f"[{row['arm']}] {row['stage']:<10} step {row['step']:>5}  LM loss {losses}"


def _base_stage(setup: Setup, log) -> Path:
    """Fine-tune (or load) the base model; returns the weights every arm starts from."""
    run, config = setup.run, setup.config
    weights = _weights(run, "concept", "base")
    if _marker(run, "concept", "base").is_file():
        log("[base] already done; resuming")
        return weights
    losses: list[float] = []
    extra: list[dict] = []
    if config.checkpoint:
        _load_weights(setup, Path(config.checkpoint))
    else:
        # Steps before pruning count up to 0, so curves show fine-tuning leading into it.
        losses = train(
            setup.module,
            setup.loss_fn(),
            setup.train_data,
            config.base_steps,
            _train_config(config),
            seed=config.seed,
            on_step=_periodic_eval(
                setup, "concept", "base", -config.base_steps, config.base_steps, None, extra
            ),
            progress=setup.progress,
            description="fine-tuning base model",
        )
    _finish_stage(setup, "concept", "base", 0, losses, None, extra, log)
    return weights


def _neuron_sets(setup: Setup, ranking: Ranking) -> dict[str, NeuronSet]:
    config = setup.config
    if config.selection == "fraction":
        concept = NeuronSet.top_fraction(ranking, config.fraction)
    elif config.selection == "count":
        concept = NeuronSet.top_k(ranking, config.count)
    else:
        concept = NeuronSet.per_layer_top_k(ranking, config.count)
    sets = {"concept": concept}
    if config.baseline == "random":
        sets["random"] = concept.random_matching(seed=config.seed)
    for arm, neurons in sets.items():
        neurons.save(setup.run.neurons_path(arm))
    return sets


def _run_arm(setup: Setup, arm: str, neurons: NeuronSet, base_weights: Path, log) -> None:
    config, run = setup.config, setup.run
    stages = stage_names(config.stages)[1:]
    done = [s for s in stages if _marker(run, arm, s).is_file()]
    if len(done) == len(stages):
        log(f"[{arm}] all stages done")
        return
    start = _weights(run, arm, done[-1]) if done else base_weights
    for stale in done[:-1]:  # left behind by a kill between a marker and the clean-up
        _drop_weights(run, arm, stale)
    _load_weights(setup, start)
    if config.mode == "regrow" and not done:
        prune_weights(setup.model, neurons, zero_output=False)  # see prune_weights: may regrow
    hold = Ablation(setup.model, neurons, permanent=True) if config.mode == "hold" else None
    dead = neurons.mask() if hold is not None else None
    try:
        for index, stage in enumerate(stages):
            if stage in done:
                continue
            step = index * config.stage_steps
            losses: list[float] = []
            extra: list[dict] = []
            if stage != "pruned":
                losses = _retrain(setup, arm, stage, index, step, dead, extra)
            _finish_stage(setup, arm, stage, step, losses, dead, extra, log)
            _drop_weights(run, arm, stages[index - 1] if index else None)
    finally:
        if hold is not None:
            hold.remove()


def _retrain(
    setup: Setup,
    arm: str,
    stage: str,
    index: int,
    step: int,
    dead: torch.Tensor | None,
    extra: list[dict],
) -> list[float]:
    config = setup.config
    arm_index = ("concept", "random").index(arm)
    return train(
        setup.module,
        setup.loss_fn(),
        setup.train_data,
        config.stage_steps,
        _train_config(config),
        seed=config.seed * 1000 + arm_index * 100 + index,
        on_step=_periodic_eval(
            setup, arm, stage, step - config.stage_steps, config.stage_steps, dead, extra
        ),
        progress=setup.progress,
        description=f"[{arm}] {stage}",
    )


def _periodic_eval(
    setup: Setup,
    arm: str,
    stage: str,
    first_step: int,
    n_steps: int,
    dead: torch.Tensor | None,
    rows: list[dict],
):
    """An ``on_step`` callback evaluating every ``eval_every`` steps inside a stage; its rows
    are named ``stage@n`` and kept with the stage's own row."""
    config = setup.config

    def on_step(n: int, loss: float) -> None:
        if config.eval_every and n % config.eval_every == 0 and n < n_steps:
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
            setup.module.train()

    return on_step


def _drop_weights(run: RunDir, arm: str, stage: str | None) -> None:
    """Only the latest stage's weights are needed to resume; keep disk use flat."""
    if stage is not None:
        _weights(run, arm, stage).unlink(missing_ok=True)


def _read_ranking(run: RunDir, arm: str, stage: str):
    import pandas as pd

    return pd.read_parquet(run.stage_dir(arm, stage) / "ranking.parquet")


def _rows(run: RunDir, arms: tuple[str, ...], n_stages: int) -> list[dict]:
    rows = []
    for arm in arms:
        for stage in stage_names(n_stages):
            marker = _marker(run, "concept" if stage == "base" else arm, stage)
            if marker.is_file():
                for row in json.loads(marker.read_text())["rows"]:
                    rows.append({**row, "arm": arm})
    return rows


def _rewrite_metrics(setup: Setup) -> None:
    rows = _rows(setup.run, setup.config.arms, setup.config.stages)
    atomic_write_text(setup.run.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))


def _summary(setup: Setup, neuron_sets: dict[str, NeuronSet]) -> dict[str, Any]:
    rows = _rows(setup.run, setup.config.arms, setup.config.stages)
    arms = {}
    for arm, neurons in neuron_sets.items():
        stages = [
            {k: v for k, v in row.items() if k != "arm"}
            for row in rows
            if row["arm"] == arm and "@" not in row["stage"]
        ]
        arms[arm] = {
            "neurons": len(neurons),
            "per_layer": {str(k): v for k, v in sorted(neurons.per_layer_counts().items())},
            "stages": stages,
        }
    return {"config": setup.config.to_dict(), "arms": arms}
