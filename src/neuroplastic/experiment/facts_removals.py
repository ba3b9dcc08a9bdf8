"""The facts study's removal and its control, one seed (:func:`removals_of`): neurons held at
zero beside as many random neurons per layer, an eraser held at every layer beside random
directions removing as much variance, or a weight edit (gradient difference or RMU on the
forget facts against the retain facts) beside the same edit of as many held-out facts.

Each is kept in the seed's directory as soon as it is made (``neurons-<arm>.json``,
``erasure-<arm>.safetensors``, or ``edit-<arm>.safetensors`` with ``edits.json``), so that a
resumed run reads back and holds exactly the same removal."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

from neuroplastic.core.ablation import ablate
from neuroplastic.core.erasure import (
    LinearErasure,
    erase,
    fit_direction,
    fit_leace,
    fit_matched_control,
)
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.unlearning import (
    changed_tensors,
    gradient_difference,
    mean_residual_norm,
    rmu,
)
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.facts import FORGET, RETAIN, TRAIN_TEMPLATES, render_facts
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_data import StudyData, facts_dataset
from neuroplastic.experiment.facts_gainers import recall_ranking
from neuroplastic.experiment.facts_scoring import Scores, answer_loss
from neuroplastic.experiment.facts_states import Removal, restored
from neuroplastic.facts_config import WEIGHT_EDITS, FactsConfig
from neuroplastic.io import atomic_write_bytes, atomic_write_json


def removals_of(
    model: Any, data: StudyData, config: FactsConfig, directory: Path
) -> tuple[dict[str, Removal], int]:
    """The removal and its control of ``config.removal`` by arm, made in ``directory`` or read
    back from it, and the removal's size: the neurons it holds, the eraser's rank, or the
    number of weights the edit changed."""
    make = (
        _neuron_removals
        if config.removal == "neurons"
        else _edit_removals
        if config.removal in WEIGHT_EDITS
        else _erasure_removals
    )
    return make(model, data, config, directory)


def _neuron_removals(
    model: Any, data: StudyData, config: FactsConfig, directory: Path
) -> tuple[dict[str, Removal], int]:
    """The ranked neurons and their control (as many random neurons in each layer), ranked on
    the recall positions of forget against retain facts; read back on resumption."""
    paths = {arm: directory / f"neurons-{arm}.json" for arm in ("removal", "control")}
    if all(p.exists() for p in paths.values()):
        sets = {arm: NeuronSet.load(p) for arm, p in paths.items()}
    else:
        removal = NeuronSet.top_fraction(
            recall_ranking(model, data.recall, config.method), config.fraction
        )
        sets = {"removal": removal, "control": removal.random_matching(seed=config.seed)}
        for arm, neurons in sets.items():
            neurons.save(paths[arm])
    return {
        arm: functools.partial(ablate, neurons=neurons, permanent=True)
        for arm, neurons in sets.items()
    }, len(sets["removal"])


def _erasure_removals(
    model: Any, data: StudyData, config: FactsConfig, directory: Path
) -> tuple[dict[str, Removal], int]:
    """A LEACE eraser (or the difference-of-means direction) of forget against retain at the
    recall positions, held at every layer's residual stream, and its matched control (random
    directions removing as much of each layer's variance); read back on resumption."""
    paths = {arm: directory / f"erasure-{arm}.safetensors" for arm in ("removal", "control")}
    if all(p.exists() for p in paths.values()):
        erasures = {arm: LinearErasure.load(p) for arm, p in paths.items()}
    else:
        fit = fit_leace if config.removal == "leace" else fit_direction
        layers = list(range(int(model.cfg.n_layers)))
        removal = fit(model, data.recall, FORGET, layers)
        erasures = {
            "removal": removal,
            "control": fit_matched_control(model, data.recall, removal, seed=config.seed),
        }
        for arm, erasure in erasures.items():
            erasure.save(paths[arm])
    return {
        arm: functools.partial(erase, erasure=erasure, permanent=True)
        for arm, erasure in erasures.items()
    }, erasures["removal"].rank


def _unlearn(
    model: Any, data: StudyData, config: FactsConfig, forget: ConceptDataset
) -> dict[str, Any]:
    """Edit ``model`` in place by the config's weight-editing removal on ``forget`` against the
    retain facts; returns what the manifest records of it."""
    retain = facts_dataset(
        [r.sentence for r in render_facts(data.edit_retain, TRAIN_TEMPLATES, RETAIN)],
        model,
        config,
    )
    if config.removal == "graddiff":
        history = gradient_difference(
            model,
            forget,
            retain,
            answer_loss,
            config.graddiff_steps,
            config.graddiff_lr,
            config.batch_size,
            config.seed,
            retain_weight=config.graddiff_retain_weight,
        )
        return {"history": history}
    # The steering norm is stated against the residual scale of the removal's forget facts,
    # for the removal and its control alike: both arms steer to the same c.
    scale = mean_residual_norm(model, data.train["same"], config.rmu_layer)
    steering = config.rmu_steering * scale
    history = rmu(
        model,
        forget,
        retain,
        config.rmu_layer,
        config.rmu_updated_layers,
        steering,
        config.rmu_alpha,
        config.rmu_steps,
        config.rmu_lr,
        config.batch_size,
        config.seed,
    )
    return {"mean_residual_norm": scale, "steering_norm": steering, "history": history}


@contextlib.contextmanager
def _edited(model: Any, tensors: dict[str, Tensor]) -> Iterator[None]:
    """The edited weights loaded over the model's (the caller restores the base after)."""
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise NeuroplasticError(
            f"a kept weight edit names tensors this model does not have "
            f"({', '.join(result.unexpected_keys[:3])}...): it was made with another model or "
            "library version; remove the seed's edit-*.safetensors and edits.json to redo it"
        )
    yield


def _edit_removals(
    model: Any, data: StudyData, config: FactsConfig, directory: Path
) -> tuple[dict[str, Removal], int]:
    """Gradient difference or RMU on the forget facts (T and V), and its control: the same
    method, settings and batches' schedule on as many held-out known facts of the relation.
    Each edit's changed tensors are kept in
    ``edit-<arm>.safetensors``, their digest and the run's loss terms in ``edits.json``; a
    resumed run loads them back (and redoes an edit whose file does not match its digest).
    Returns the removals and the number of weights the removal changed."""
    from safetensors.torch import load, save

    manifest_path = directory / "edits.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    base: dict[str, Tensor] | None = None
    edits: dict[str, dict[str, Tensor]] = {}
    for arm in ("removal", "control"):
        path = directory / f"edit-{arm}.safetensors"
        record = manifest.get(arm)
        if arm == "removal":
            facts = [*data.split.forget_t, *data.split.forget_v]
            forget = data.train["same"]
        else:
            facts, forget = data.control_forget(model, config)
        if record and record["forget_facts"] != [f.key for f in facts]:
            raise NeuroplasticError(
                f"{directory}/edits.json: the kept {arm} edit unlearned other facts than this "
                "seed's split gives; it was made under other settings: give another --out"
            )
        if record and path.exists():
            payload = path.read_bytes()
            if hashlib.sha256(payload).hexdigest() == record["sha256"]:
                edits[arm] = load(payload)
                continue
        measured = [s for s in Scores(directory / "scores.jsonl").states if s != "base"]
        if measured:
            raise NeuroplasticError(
                f"{directory}: the {arm} edit must be redone ({path.name} is missing or does "
                f"not match its digest), but {len(measured)} states were measured with the "
                "old one; remove the seed's scores.jsonl too to redo them all"
            )
        if base is None:
            base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        started = time.time()
        with restored(model, base):
            record = _unlearn(model, data, config, forget)
            edits[arm] = changed_tensors(model, base)
        payload = save(edits[arm])
        atomic_write_bytes(path, payload)
        manifest[arm] = {
            "method": config.removal,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "tensors": sorted(edits[arm]),
            "forget_facts": [f.key for f in facts],
            "seconds": round(time.time() - started, 1),
            **record,
        }
        atomic_write_json(manifest_path, manifest)
    # Tied weights (an embedding that is also the unembedding) are one storage kept under each
    # name: count each storage once.
    state = model.state_dict()
    changed = sum({state[n].data_ptr(): int(state[n].numel()) for n in edits["removal"]}.values())
    return {
        arm: functools.partial(_edited, tensors=tensors) for arm, tensors in edits.items()
    }, changed
