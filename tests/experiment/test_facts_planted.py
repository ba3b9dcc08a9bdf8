"""The held-out relearning protocol on planted cases whose answer is known.

A toy causal LM stores facts in a memory of ReLU units. Built in two phases, forget-T and the
retain facts live in one half of the memory and forget-V in the other half alone. Then:

- **deleted**: the removal holds V's half at zero. V's answers were stored only in what the
  removal takes away, so retraining on T cannot bring them back: recovery on V is 0.
- **suppressed**: the removal scales the whole memory's readout down (downstream of where the
  facts are stored, and shared by T and V). V's answers are still there; retraining on T learns
  to read the memory louder again (a shared gain), and V comes back with T.

The same two cases as weight edits, held the way the study holds gradient difference's and
RMU's (changed tensors loaded over the base by :func:`_edited`, every weight retrained):

- **deleted by weights**: the edit zeroes V's units' key rows and value columns. A unit whose
  keys are zero is never active, so no gradient reaches either again: recovery on V is 0.
- **suppressed by weights**: the edit sets the readout's log-gain, a weight T and V share, so
  retraining on T moves it back and V comes back with T.

The study's own code runs them all (:func:`run_states`, :func:`seed_measures`): only the model
and the removals are planted."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from neuroplastic.analysis.facts_measures import seed_measures
from neuroplastic.core.training import TrainConfig, train
from neuroplastic.data.facts import (
    EVAL_TEMPLATES,
    FORGET,
    TRAIN_TEMPLATES,
    generate_facts,
    render_facts,
    split_facts,
)
from neuroplastic.experiment.facts_data import StudyData, facts_dataset
from neuroplastic.experiment.facts_removals import _edited
from neuroplastic.experiment.facts_scoring import Scores, answer_loss
from neuroplastic.experiment.facts_states import run_states
from neuroplastic.facts_config import FactsConfig

pytestmark = pytest.mark.slow  # two toy trainings and 24 model states, about 40 s

D_MODEL, D_MEMORY = 64, 256
#: Where V is stored: the first half of the memory.
V_UNITS = torch.arange(D_MEMORY // 2)
#: The log-gain's step size: a shared gain that Adam can move within a short retraining.
GAIN_SCALE = 1000.0


class FactMemory(nn.Module):
    """Each position reads the mean embedding of the tokens up to it (causal) through a memory
    of ReLU units, a learned gain on the memory's readout and a shared bias, into the
    vocabulary. The readout factor and the unit mask are the two planted removals."""

    def __init__(self, tokenizer: object) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokenizer = tokenizer
        self.embed = nn.Embedding(len(tokenizer), D_MODEL)  # type: ignore[arg-type]
        self.keys = nn.Linear(D_MODEL, D_MEMORY, bias=False)
        self.values = nn.Linear(D_MEMORY, D_MODEL, bias=False)
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(D_MODEL))
        self.unembed = nn.Linear(D_MODEL, len(tokenizer), bias=False)  # type: ignore[arg-type]
        self.unit_mask = torch.ones(D_MEMORY)
        self.readout = 1.0

    def forward(
        self, tokens: Tensor, attention_mask: Tensor | None = None, return_type: str = "logits"
    ) -> Tensor:
        # Right padding only follows the real tokens, so a causal prefix never reads it.
        prefix = self.embed(tokens).cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[:, None]
        memory = torch.relu(self.keys(prefix)) * self.unit_mask
        gain = torch.exp(GAIN_SCALE * self.log_gain) * self.readout
        return self.unembed(gain * self.values(memory) + self.bias)

    @contextlib.contextmanager
    def without_units(self, units: Tensor) -> Iterator[None]:
        self.unit_mask[units] = 0
        try:
            yield
        finally:
            self.unit_mask[:] = 1

    @contextlib.contextmanager
    def quieter(self, factor: float) -> Iterator[None]:
        self.readout = factor
        try:
            yield
        finally:
            self.readout = 1.0


@pytest.fixture(scope="module")
def planted(tiny_llama, tmp_path_factory):
    """The toy, knowing every fact of the pool, T and retain outside V_UNITS and V inside."""
    facts = generate_facts(n_cities=300)
    capitals = [f for f in facts if f.relation == "capital_of"][:32]
    # Retain facts that share no word with a capital fact: a city that is a capital, or a
    # country whose capital is asked, would teach the inverse relation, a path to V.
    names = {w for f in capitals for w in f"{f.subject} {f.answer}".split()}
    cities = [
        f
        for f in facts
        if f.relation == "country_of" and not names & set(f"{f.subject} {f.answer}".split())
    ][:16]
    pool = capitals + cities
    split = split_facts(pool, "capital_of", seed=0)
    model = FactMemory(tiny_llama.tokenizer)
    config = FactsConfig(
        model="toy",
        protocols=("heldout",),
        steps=30,
        learning_rate=3e-4,
        retain_questions=16,
        general_sentences=8,
    )
    every_template = {r: TRAIN_TEMPLATES[r] + EVAL_TEMPLATES[r] for r in TRAIN_TEMPLATES}

    def sentences(facts):
        rendered = render_facts(facts, every_template, FORGET)
        return facts_dataset([r.sentence for r in rendered], model, config)

    settings = TrainConfig(learning_rate=1e-2, batch_size=16, weight_decay=0.0)
    # The gain stays 1 while the facts are stored; it is the retrainer's to move.
    model.log_gain.requires_grad_(False)
    # Phase 1: T and retain, with V's units held at zero: they are stored elsewhere.
    with model.without_units(V_UNITS):
        train(model, answer_loss, sentences([*split.forget_t, *split.retain]), 300, settings, 0)
    # Phase 2: V, with only V's units free to learn: V is stored there alone.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    rows = torch.zeros(D_MEMORY, 1)
    rows[V_UNITS] = 1
    hooks = []
    for weight, mask in ((model.keys.weight, rows), (model.values.weight, rows.T)):
        weight.requires_grad_(True)
        hooks.append(weight.register_hook(lambda grad, mask=mask: grad * mask))
    train(model, answer_loss, sentences(split.forget_v), 300, settings, 1)
    for hook in hooks:
        hook.remove()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.eval()
    data = StudyData(model, config, tmp_path_factory.mktemp("planted"), facts=pool)
    return model, config, data


def _measures(planted, removal, path):
    model, config, data = planted
    scores = Scores(path)
    run_states(model, data, config, {"removal": removal, "control": removal}, scores, print)
    return seed_measures(scores.states, config.protocols)


def test_the_planted_model_knows_every_fact(planted):
    _, _, data = planted
    sizes = data.sizes()
    assert sizes["forget_t"] >= 6 and sizes["forget_v"] >= 6 and sizes["retain"] >= 8


def test_facts_stored_only_in_what_is_removed_do_not_come_back_from_t(planted, tmp_path):
    measures = _measures(planted, lambda model: model.without_units(V_UNITS), tmp_path / "d.jsonl")
    assert measures["removal_drop_v"] >= 0.6  # V is gone ...
    assert measures["removal_drop_t"] == 0  # ... and T, stored elsewhere, is untouched
    assert measures["heldout_removal_recovered"] <= 0.05


def test_facts_suppressed_downstream_come_back_from_t(planted, tmp_path):
    measures = _measures(planted, lambda model: model.quieter(0.05), tmp_path / "s.jsonl")
    assert measures["removal_drop_v"] >= 0.3
    assert measures["removal_drop_t"] >= 0.3  # the suppression is shared by T and V
    assert measures["heldout_removal_recovered"] >= 0.6  # 0.75 here: 0.43 -> 0.86 of 1


def _weight_edit(model: FactMemory, change) -> functools.partial:
    """A removal held as the study holds a weight edit: the changed tensors, loaded over the
    base weights (``run_states`` restores the base around every state)."""
    tensors = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    change(tensors)
    changed = {
        name: tensor
        for name, tensor in tensors.items()
        if not torch.equal(tensor, model.state_dict()[name])
    }
    return functools.partial(_edited, tensors=changed)


def _zero_v_units(tensors: dict[str, Tensor]) -> None:
    tensors["keys.weight"][V_UNITS] = 0
    tensors["values.weight"][:, V_UNITS] = 0


def _quieter_gain(tensors: dict[str, Tensor]) -> None:
    tensors["log_gain"] = torch.tensor(math.log(0.05) / GAIN_SCALE)


def test_facts_deleted_by_a_weight_edit_do_not_come_back_from_t(planted, tmp_path):
    model = planted[0]
    edit = _weight_edit(model, _zero_v_units)
    assert set(edit.keywords["tensors"]) == {"keys.weight", "values.weight"}
    measures = _measures(planted, edit, tmp_path / "wd.jsonl")
    assert measures["removal_drop_v"] >= 0.6
    assert measures["removal_drop_t"] == 0
    assert measures["heldout_removal_recovered"] <= 0.05
    # Every state began from the base weights: the edit never leaked into the model.
    assert torch.count_nonzero(model.keys.weight[V_UNITS]) > 0


def test_facts_suppressed_by_a_weight_edit_come_back_from_t(planted, tmp_path):
    edit = _weight_edit(planted[0], _quieter_gain)
    assert set(edit.keywords["tensors"]) == {"log_gain"}
    measures = _measures(planted, edit, tmp_path / "ws.jsonl")
    assert measures["removal_drop_v"] >= 0.3
    assert measures["removal_drop_t"] >= 0.3
    assert measures["heldout_removal_recovered"] >= 0.6
