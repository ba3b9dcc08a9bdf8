"""Settings for larger models and the paper's schedule: dtype, device_map, epochs, the preset."""

import math

import pytest
import torch
from safetensors.torch import load_file
from tiny import quiet, tiny_config

from neuroplastic.config import ExperimentConfig
from neuroplastic.core.generated import generated_model as _tiny
from neuroplastic.core.models import load_model, mlp_hook_name, run_forward
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment import pipeline as experiment
from neuroplastic.presets import load_preset


def test_device_map_auto_loads_a_local_model_that_computes_the_same(tmp_path):
    hf_model, tokenizer, _ = _tiny("tiny-gpt2", 0)
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    mapped, plain = load_model(str(tmp_path), device_map="auto"), load_model(str(tmp_path))
    tokens = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        got = run_forward(mapped, tokens, torch.ones_like(tokens), stop_at=mlp_hook_name(1))
        want = run_forward(plain, tokens, torch.ones_like(tokens), stop_at=mlp_hook_name(1))
    torch.testing.assert_close(got, want)


def test_device_map_on_a_generated_model_is_one_line():
    with pytest.raises(NeuroplasticError, match="--device-map applies to models loaded"):
        load_model("tiny-gpt2", device_map="auto")


def test_epochs_become_steps_by_hand():
    config = ExperimentConfig(base_epochs=3, stage_epochs=2, batch_size=8)
    assert config.steps(13_041) == (math.ceil(3 * 13_041 / 8), math.ceil(2 * 13_041 / 8))
    assert config.steps(13_041) == (4_891, 3_261)
    assert ExperimentConfig(base_steps=7, stage_steps=5).steps(1_000) == (7, 5)
    with pytest.raises(NeuroplasticError, match="stage_epochs must be a finite number"):
        ExperimentConfig(stage_epochs=float("nan"))


def test_the_paper_preset_is_the_papers_recipe():
    config = ExperimentConfig.from_dict(load_preset("paper"))
    assert (config.method, config.fraction, config.mode) == ("probeless", 0.5, "hold")
    assert (config.learning_rate, config.weight_decay, config.batch_size) == (2e-5, 0.01, 8)
    assert (config.base_epochs, config.stages, config.stage_epochs) == (3, 4, 2)
    assert config.schedule == "per-stage" and config.train_sentences == 0
    with pytest.raises(NeuroplasticError, match="unknown preset"):
        load_preset("papers")


def test_a_bfloat16_run_in_epochs_finishes_with_held_neurons_at_zero(tmp_path):
    """bfloat16 weights, epochs instead of steps: the run checks at every evaluation that the
    held neurons are exactly zero, and its steps follow the epochs."""
    config = tiny_config(model="tiny-gpt2", dtype="bfloat16", base_epochs=0.5, stage_epochs=0.25)
    summary = experiment.run_experiment(config, tmp_path, progress=False, log=quiet)
    n_train = summary["data"]["train_sentences"]
    assert summary["steps"] == {
        "base_cap": math.ceil(0.5 * n_train / 8),
        "per_stage": math.ceil(0.25 * n_train / 8),
    }
    assert summary["base"]["steps"] == summary["steps"]["base_cap"]  # no plateau stop
    steps = [s["step"] for s in summary["arms"]["concept"]["stages"]]
    assert steps == [0, 0, 3, 6]
    for arm in summary["arms"].values():
        for stage in arm["stages"]:
            assert all(0 <= f1 <= 1 for f1 in stage["f1"].values())


def test_train_sentences_zero_takes_all_the_split_leaves_to_training(corpus):
    from dataclasses import replace

    from neuroplastic.experiment.pipeline import _train_and_probe

    without_probe = replace(corpus, probe=[])  # as a CoNLL file or hub dataset comes
    config = ExperimentConfig(train_sentences=0, probe_sentences=40)
    train, probe = _train_and_probe(without_probe, config)
    assert (len(train), len(probe)) == (len(corpus.train) - 40, 40)
    # A partition of the split: every sentence once, in training or in the probe.
    assert not {id(s) for s in train} & {id(s) for s in probe}
    assert sorted(map(id, train + probe)) == sorted(map(id, corpus.train))


@pytest.mark.slow
def test_a_float16_run_trains_in_mixed_precision_at_the_default_and_a_tiny_lr(tmp_path):
    """--dtype float16 once failed with a NaN loss at step 2, whatever the learning rate."""
    for lr, out in ((1e-4, tmp_path / "default"), (1e-9, tmp_path / "tiny")):
        config = tiny_config(dtype="float16", learning_rate=lr, save_checkpoints=True)
        summary = experiment.run_experiment(config, out, progress=False, log=quiet)
        for arm in summary["arms"].values():
            for stage in arm["stages"]:
                assert all(0 <= f1 <= 1 for f1 in stage["f1"].values())
        weights = load_file(str(out / "checkpoints/concept/retrain-2.safetensors"))
        assert {tensor.dtype for tensor in weights.values()} == {torch.float32}
