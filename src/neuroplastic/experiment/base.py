"""The parts of base fine-tuning (the steps themselves, ``_fine_tune_base`` and
``_fine_tune_naive``, are :mod:`~neuroplastic.experiment.pipeline`'s): training to a plateau of
the probe loss (or a fixed budget), a sibling run's base of the same settings, the optimizer
settings, and the naive base's loss (the concept out of it) and initial weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from neuroplastic import distributed
from neuroplastic.config import CONCEPT_ARM, ExperimentConfig
from neuroplastic.core.models import load_model
from neuroplastic.core.relearn import concept_neutral_loss, concept_tag_ids
from neuroplastic.core.training import TokenClassifier, TrainConfig, Trainer, mean_loss
from neuroplastic.experiment.loading import weights_dtype
from neuroplastic.experiment.setup import Setup
from neuroplastic.progress import report_line
from neuroplastic.store.shared_base import SharedBase, find_shared_base


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
            on_step=setup.step_hook(CONCEPT_ARM, "base", first),
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


def naive_base_loss(setup: Setup):
    """The naive base's loss: blind to the concept's tokens and classes."""
    tags = concept_tag_ids(setup.train_data.tag_names, setup.config.concept)
    return concept_neutral_loss(setup.concept_id(), tags)


def _load_initial_weights(setup: Setup) -> None:
    """The weights base fine-tuning started from, into ``setup.module``: the model as loaded
    and the head as the seed initialised it (as
    :func:`~neuroplastic.experiment.loading._setup` made them)."""
    config = setup.config
    model = load_model(config.model, device="cpu", dtype=weights_dtype(config))
    torch.manual_seed(config.seed)  # the head's initialisation, as in _setup
    fresh = TokenClassifier(model, len(setup.train_data.tag_names))
    initial = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, parameter in setup.module.named_parameters():
            parameter.copy_(initial[name])
    del fresh, model, initial
