"""Weight-editing removals (gradient difference, RMU) and the LoRA retrainer in the facts study:
held-out facts and the control drawn from them, forget accuracy falling while retain holds on a
tiny run, the edit kept and read back (a resumed run holds exactly the same removal), and LoRA
retraining that changes each adapted weight by a low-rank update only."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny import FACTS_TINY

from neuroplastic.core.ablation import ablate
from neuroplastic.core.models import mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.experiment.facts_removals import _edit_removals
from neuroplastic.experiment.facts_states import _retrain, restored, retrainers, states_of
from neuroplastic.experiment.facts_study import run_facts_seed
from neuroplastic.facts_config import FactsConfig

pytestmark = pytest.mark.slow  # tiny-llama edits and retrainings, about 40 s in all

TINY = dict(FACTS_TINY)
#: Settings that take the tiny model's known facts: a random model "knows" a fact by chance,
#: so a strong, short edit.
GRADDIFF = dict(removal="graddiff", graddiff_lr=1e-3)
RMU = dict(removal="rmu", rmu_lr=1e-2, rmu_steering=20.0, rmu_steps=60)


def _accuracy(state, part):
    return state[part]["multiple_choice"]


def test_held_out_facts_are_apart_from_t_and_v_and_feed_the_control(tiny_llama, tmp_path):
    config = FactsConfig(**TINY, **GRADDIFF)
    data = StudyData(tiny_llama, config, tmp_path)
    t, v, held = set(data.split.forget_t), set(data.split.forget_v), set(data.held_out)
    assert held and not held & (t | v)
    assert all(f.relation == config.forget_relation for f in held)
    assert len(held) >= len(t) + len(v)  # rounded up: a half holds as many as T and V
    chosen, dataset = data.control_forget(tiny_llama, config)
    assert set(chosen) <= held and len(chosen) == len(t) + len(v)
    assert len(dataset) == len(data.train["same"])  # as many sentences as the forget facts
    assert [q.fact for q in data.questions["held_out"]] == data.held_out


def test_a_weight_edit_needs_held_out_facts():
    with pytest.raises(NeuroplasticError, match="held_out share"):
        FactsConfig(removal="rmu")


@pytest.mark.parametrize("settings", [GRADDIFF, RMU], ids=["graddiff", "rmu"])
def test_the_edit_takes_the_forget_facts_and_keeps_the_retain_facts(tiny_llama, tmp_path, settings):
    summary = run_facts_seed(FactsConfig(**TINY, **settings), tmp_path, model=tiny_llama)
    base, removed = summary["states"]["base"], summary["states"]["removal"]
    assert _accuracy(base, "forget_v") == 1.0  # known facts only
    assert _accuracy(removed, "forget_v") <= 0.6
    assert _accuracy(removed, "retain") >= _accuracy(base, "retain") - 0.15
    manifest = json.loads((tmp_path / "seed-0" / "edits.json").read_text())
    assert manifest["removal"]["method"] == settings["removal"]
    steps = settings.get("rmu_steps", FactsConfig().graddiff_steps)
    assert len(manifest["removal"]["history"]) == steps
    # The control unlearned other facts than the removal, of the same number.
    removal_facts, control_facts = (set(manifest[a]["forget_facts"]) for a in manifest)
    assert len(removal_facts) == len(control_facts) and not removal_facts & control_facts


def test_rmu_edits_only_the_mlps_it_updates(tiny_llama, tmp_path):
    config = FactsConfig(**{**TINY, "rmu_updated_layers": (1,)}, **RMU)
    run_facts_seed(config, tmp_path, model=tiny_llama)
    manifest = json.loads((tmp_path / "seed-0" / "edits.json").read_text())
    for arm in ("removal", "control"):
        assert manifest[arm]["tensors"]
        assert all(name.startswith("blocks.1.mlp.") for name in manifest[arm]["tensors"])
        assert manifest[arm]["steering_norm"] == pytest.approx(
            20.0 * manifest[arm]["mean_residual_norm"]
        )


def test_a_resumed_run_holds_exactly_the_same_edit(tiny_llama, tmp_path):
    config = FactsConfig(**TINY, **GRADDIFF)
    run_facts_seed(config, tmp_path, model=tiny_llama)
    directory = tmp_path / "seed-0"
    first = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "summary.json"}
    edited = {p: (directory / p).stat().st_mtime_ns for p in first if p.startswith("edit")}
    # A kill after three states, mid-line in the fourth; the summary never written.
    lines = (directory / "scores.jsonl").read_text().splitlines()
    (directory / "scores.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    (directory / "summary.json").unlink()
    run_facts_seed(config, tmp_path, model=tiny_llama)
    # The edits were read back, not redone, and every state came out the same.
    assert {p: (directory / p).stat().st_mtime_ns for p in edited} == edited
    assert {p: (directory / p).read_bytes() for p in first if p != "scores.jsonl"} == {
        p: b for p, b in first.items() if p != "scores.jsonl"
    }
    assert _scores(directory) == _scores_of(first["scores.jsonl"])
    # An edit file that does not match its digest is redone, to the same bytes.
    (directory / "edit-removal.safetensors").write_bytes(b"torn")
    (directory / "scores.jsonl").unlink()
    run_facts_seed(config, tmp_path, model=tiny_llama)
    assert (directory / "edit-removal.safetensors").read_bytes() == first[
        "edit-removal.safetensors"
    ]
    assert _scores(directory) == _scores_of(first["scores.jsonl"])


def _scores_of(text):
    """Every state's scores, less the seconds it took."""
    records = [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _scores(directory):
    return _scores_of((directory / "scores.jsonl").read_bytes())


def test_the_edit_is_loaded_for_its_arm_and_undone_after(tiny_llama, tmp_path):
    config = FactsConfig(**TINY, **GRADDIFF)
    data = StudyData(tiny_llama, config, tmp_path)
    directory = tmp_path / "seed-0"
    directory.mkdir()
    base = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    removals, changed = _edit_removals(tiny_llama, data, config, directory)
    # Every weight trained, each counted once: the parameters (a tied embedding is one; the
    # unembedding's bias, the bridge's zeros for a Llama, is none).
    assert changed == sum(p.numel() for p in tiny_llama.parameters())
    from safetensors.torch import load_file

    saved = load_file(directory / "edit-removal.safetensors")
    with restored(tiny_llama, base), removals["removal"](tiny_llama):
        inside = tiny_llama.state_dict()
        assert all(torch.equal(inside[name], value) for name, value in saved.items())
    after = tiny_llama.state_dict()
    assert all(torch.equal(after[name], value) for name, value in base.items())


def test_an_older_run_without_the_new_settings_resumes(tiny_llama, tmp_path):
    config = FactsConfig(**{**TINY, "held_out": 0.0, "max_facts": 12})
    run_facts_seed(config, tmp_path, model=tiny_llama)
    path = tmp_path / "seed-0" / "config.json"
    recorded = json.loads(path.read_text())
    for name in ("held_out", "relearn_adapter", "lora_rank", "best_case_adapters", "rmu_lr"):
        recorded.pop(name)
    path.write_text(json.dumps(recorded))
    run_facts_seed(config, tmp_path, model=tiny_llama)  # no refusal


def test_retrainers_name_every_rate_and_adapter():
    config = FactsConfig(learning_rate=3e-5, best_case_lrs=(1e-4,), best_case_adapters=("lora",))
    assert retrainers(config) == {
        "": (3e-5, "full"),
        "@0.0001": (1e-4, "full"),
        "@lora": (3e-5, "lora"),
        "@lora@0.0001": (1e-4, "lora"),
    }
    states = states_of(("heldout",), list(retrainers(config)))
    assert "heldout@lora@0.0001/removal" in states and len(states) == 3 + 4 * 3


def test_lora_retraining_moves_each_weight_by_a_low_rank_update(tiny_llama, tmp_path):
    config = FactsConfig(**{**TINY, "held_out": 0.0, "max_facts": 12}, lora_rank=2)
    data = StudyData(tiny_llama, config, tmp_path)
    base = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    neurons = NeuronSet.of(2, 64, [(0, 1), (1, 5)])
    captured = []
    hook = (mlp_hook_name(0), lambda act, hook: captured.append(act[..., 1].detach()))
    try:
        with ablate(tiny_llama, neurons, permanent=True):
            tiny_llama.add_hook(*hook)
            _retrain(tiny_llama, data, config, "heldout", learning_rate=1e-2, adapter="lora")
            tiny_llama.reset_hooks(including_permanent=False)
        after = tiny_llama.state_dict()
        assert list(after) == list(base)
        moved = {k for k in base if not torch.equal(after[k], base[k])}
        assert moved and all(".attn." in k or ".mlp." in k for k in moved)
        for name in moved:
            assert torch.linalg.matrix_rank(after[name] - base[name]) <= 2
        # The held neuron was silent in every training step.
        assert captured and all(float(a.abs().max()) == 0.0 for a in captured)
    finally:
        tiny_llama.reset_hooks(including_permanent=True)
        tiny_llama.load_state_dict(base)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_lora_retraining_starts_every_arm_from_the_same_adapters(tiny_llama, tmp_path):
    """PEFT draws the adapters at random; from the seed, two retrainings are one."""
    config = FactsConfig(**{**TINY, "held_out": 0.0, "max_facts": 12}, lora_rank=2)
    data = StudyData(tiny_llama, config, tmp_path)
    base = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    retrained = []
    try:
        for _ in range(2):
            torch.manual_seed(len(retrained))  # whatever the global state was before
            _retrain(tiny_llama, data, config, "heldout", learning_rate=1e-2, adapter="lora")
            retrained.append({k: v.clone() for k, v in tiny_llama.state_dict().items()})
            tiny_llama.load_state_dict(base)
    finally:
        tiny_llama.load_state_dict(base)
    assert all(torch.equal(retrained[0][k], retrained[1][k]) for k in base)
    assert any(not torch.equal(retrained[0][k], base[k]) for k in base)


def test_the_edit_keeps_retain_facts_that_are_never_asked(tiny_llama, tmp_path):
    asked_apart = StudyData(tiny_llama, FactsConfig(**TINY, **GRADDIFF), tmp_path)
    asked = {q.fact for q in asked_apart.questions["retain"]}
    assert asked and not asked & set(asked_apart.edit_retain)
    assert set(asked_apart.edit_retain) | asked == set(asked_apart.split.retain)
    every = StudyData(tiny_llama, FactsConfig(**TINY, **GRADDIFF, edit_retain="all"), tmp_path)
    assert every.edit_retain == list(every.split.retain)


def test_a_kept_edit_is_never_redone_under_states_measured_with_it(tiny_llama, tmp_path):
    config = FactsConfig(**TINY, **GRADDIFF)
    run_facts_seed(config, tmp_path, model=tiny_llama)
    directory = tmp_path / "seed-0"
    (directory / "edit-control.safetensors").write_bytes(b"torn")
    with pytest.raises(NeuroplasticError, match="measured with the old one"):
        run_facts_seed(config, tmp_path, model=tiny_llama)
    # A run made before edit_retain existed kept every retain fact: it resumes as such only.
    path = directory / "config.json"
    recorded = json.loads(path.read_text())
    recorded.pop("edit_retain")
    path.write_text(json.dumps(recorded))
    with pytest.raises(NeuroplasticError, match="edit_retain"):
        run_facts_seed(config, tmp_path, model=tiny_llama)
    # The weight edits' settings do not bind a study of another removal.
    from neuroplastic.experiment.facts_resumption import uses_setting

    assert not uses_setting("neurons", "rmu_lr") and not uses_setting("rmu", "graddiff_lr")
    assert uses_setting("rmu", "rmu_lr") and uses_setting("graddiff", "edit_retain")


def test_an_edit_naming_tensors_the_model_lacks_is_refused(tiny_llama):
    from neuroplastic.experiment.facts_removals import _edited

    with pytest.raises(NeuroplasticError, match="another model"):
        with _edited(tiny_llama, {"blocks.99.mlp.in.weight": torch.zeros(1)}):
            pass
