"""The states a seed of the facts study measures, and how it measures them: base, each removal
alone, then each retrainer's protocols in each arm (:func:`states_of`), every one from the base
weights (:func:`restored`), the arm's removal held, retrained (:func:`_retrain`) and scored
(:func:`~neuroplastic.experiment.facts_scoring.measure`) into ``scores.jsonl``; a state already
there is skipped (:func:`run_states`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from neuroplastic.core.adapters import lora_adapters
from neuroplastic.core.fitted_lens import final_residuals
from neuroplastic.core.training import TrainConfig, lm_loss, train
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.experiment.facts_gainers import Gainers
from neuroplastic.experiment.facts_scoring import LENSES, Scores, answer_loss, measure
from neuroplastic.facts_config import ARMS, FactsConfig
from neuroplastic.progress import report_line

#: A removal: given the model, a context manager that holds it for the block (its hooks, or a
#: weight edit loaded over the model's weights).
Removal = Callable[[Any], contextlib.AbstractContextManager]


def no_removal(model: Any) -> contextlib.AbstractContextManager:
    """The ``none`` arm's removal: nothing held."""
    return contextlib.nullcontext()


def lr_tag(learning_rate: float) -> str:
    """How a best-case learning rate names its states: ``heldout@0.0001/removal``."""
    return f"@{learning_rate:g}"


def retrainers(config: FactsConfig) -> dict[str, tuple[float, str]]:
    """Each retrainer of a protocol's arms by the tag its states carry, as (learning rate,
    adapter): the main one (tag ``""``), then every other learning rate with the main adapter,
    then each best-case adapter at every rate (``@lora``, ``@lora@0.0001``)."""
    rates = [config.learning_rate, *config.best_case_lrs]
    out: dict[str, tuple[float, str]] = {}
    for adapter in (config.relearn_adapter, *config.best_case_adapters):
        for rate in rates:
            tag = "" if adapter == config.relearn_adapter else f"@{adapter}"
            tag += "" if rate == config.learning_rate else lr_tag(rate)
            out[tag] = (rate, adapter)
    return out


def states_of(protocols: Sequence[str], tags: Sequence[str] = ("",)) -> list[str]:
    """Every state a seed measures, in the order it measures them: base, each removal alone,
    then each retrainer's (``tags``, the main one ``""`` first) protocols and arms."""
    return ["base", "removal", "control"] + [
        f"{protocol}{tag}/{arm}" for tag in tags for protocol in protocols for arm in ARMS
    ]


#: What is measured of base and of each removal alone: forget-V and T, retain, general loss,
#: and the held-out facts of the forget relation where some are held out.
EVERYTHING = ("forget_v", "forget_t", "retain", "held_out", "general", *LENSES)
#: What is measured after retraining: V, the question, V through both lenses at every layer,
#: and the general loss (a retraining that wrecks the model is no relearning). T is trained on
#: under heldout, retain under retain.
RETRAINED = ("forget_v", "general", *LENSES)


def run_states(
    model: Any,
    data: StudyData,
    config: FactsConfig,
    removals: dict[str, Removal],
    scores: Scores,
    log: Callable[[str], None] = report_line,
    gainers: Gainers | None = None,
) -> None:
    """Measure every state not yet in ``scores``: base, each removal alone, and each
    protocol's retraining in each arm, every one from the base weights. ``gainers``: the
    surviving neurons that gain saliency in the held arms are found from each retrained model
    too, and written before its scores (:mod:`neuroplastic.experiment.facts_gainers`)."""
    removals = {"none": no_removal, **removals}
    base_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tools = retrainers(config)
    read = hasattr(model, "run_with_cache")  # (a planted toy has no lens: see measure)
    targets: Tensor | None = None

    def base_output() -> Tensor | None:
        """Base's last layer on the general text, what every state's fitted lens predicts:
        taken once, from the base weights with nothing held."""
        nonlocal targets
        if targets is None and read:
            with restored(model, base_weights):
                targets = final_residuals(model, data.general)
        return targets

    unread: dict[str, list[str]] = {}
    for state in states_of(config.protocols, list(tools)):
        retraining, _, arm = state.rpartition("/")
        protocol, at, tag = retraining.partition("@")
        arm = arm if arm in removals else "none"  # "base" holds nothing
        if state in scores.states:
            if gainers is not None:
                gainers.note_resumed(state)  # never retrained for gainers alone
            record = scores.states[state]
            missing = [part for part in LENSES if part not in record] if read else []
            if missing and protocol:
                unread[state] = missing  # its retrained model is not kept
            elif missing:
                # Measured before a lens existed: base and a removal alone are rebuilt exactly
                # (the base weights, the arm held), so only the missing lens is measured.
                lens_targets = base_output()
                with restored(model, base_weights), removals[arm](model):
                    scores.add(record | measure(model, data, missing, lens_targets))
                log(f"seed {config.seed} {state}: read through the {_lens_names(missing)} now")
            continue
        started = time.time()
        learning_rate, adapter = tools[at + tag]
        lens_targets = base_output()
        follow = gainers is not None and gainers.pending(state)
        if follow:
            with restored(model, base_weights):
                gainers.prepare(model, arm, removals[arm])
        with restored(model, base_weights), removals[arm](model):
            if protocol:
                _retrain(model, data, config, protocol, learning_rate, adapter)
            record = measure(model, data, RETRAINED if protocol else EVERYTHING, lens_targets)
            # Here and only here the model is this state's retrained one.
            found = gainers.retrained(model, state) if follow else None
        if found is not None:
            # Back at the start, the arm still held: the views' "before" side, then the file.
            with restored(model, base_weights), removals[arm](model):
                gainers.save(model, found)
        record |= {"state": state, "seconds": round(time.time() - started, 1)}
        scores.add(record)
        log(f"seed {config.seed} {state}: V {record['forget_v']['multiple_choice']:.3f}")
    if unread:
        parts = [part for part in LENSES if any(part in m for m in unread.values())]
        log(
            f"seed {config.seed}: {len(unread)} retrained states were measured before the "
            f"{_lens_names(parts)} existed, and retrained models are not kept: none for them "
            f"(n/a in the measures), e.g. {next(iter(unread))}"
        )


def _lens_names(parts: Sequence[str]) -> str:
    names = {"forget_v_lens": "logit lens", "forget_v_fitted": "fitted lens"}
    return " and ".join(names[part] for part in parts)


@contextlib.contextmanager
def restored(model: Any, weights: dict[str, Tensor]) -> Iterator[None]:
    """The base weights before the block and after it: every state starts from base."""
    model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(weights)
        model.eval()


def _retrain(
    model: Any,
    data: StudyData,
    config: FactsConfig,
    protocol: str,
    learning_rate: float | None = None,
    adapter: str = "full",
) -> None:
    """``config.steps`` AdamW steps on the protocol's data (at ``learning_rate``, by default
    the config's), the seed's batches: every arm of a protocol sees the same batches in the
    same order. With ``adapter="lora"`` only LoRA adapters of rank ``config.lora_rank`` train
    (the removal's hooks still held), and are merged into the weights after: the model is
    then measured as retrained, and the caller's restore of the base weights undoes it."""
    loss = lm_loss if protocol == "unrelated" else answer_loss
    settings = TrainConfig(
        learning_rate=learning_rate or config.learning_rate,
        batch_size=config.batch_size,
        weight_decay=0.0,
    )

    def run() -> None:
        # No gradient left over from an earlier state: clipping measures every parameter's
        # gradient, and one a LoRA retraining does not train would still count.
        model.zero_grad(set_to_none=True)
        train(
            model,
            loss,
            data.train[protocol],
            config.steps,
            settings,
            seed=config.seed,
            progress=False,
            description=f"retraining ({protocol})",
        )
        model.zero_grad(set_to_none=True)

    if adapter == "lora":
        # PEFT draws each adapter's A at random: from the seed, so that every arm of a
        # protocol starts from the same adapters, and a rerun from the same ones again.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            with lora_adapters(model, rank=config.lora_rank) as adapters:
                run()
                for layer in adapters.layers:
                    layer.merge()
        return
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    run()
