"""A run whose removal is an erasure (``--removal leace|direction``): fitted at base, saved with
the run, held through retraining and every evaluation, its control a random projection
removing the same share of variance.

Expectations are independent of the pipeline: the erasure fitted again by hand on the base
weights the run kept, the residual stream captured and erased again, the settings' refusals.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from scipy.stats import rankdata
from tiny import tiny_config

from neuroplastic.config import ExperimentConfig
from neuroplastic.core.erasure import LinearErasure, erase, fit_direction, fit_leace
from neuroplastic.core.halves import split_probe
from neuroplastic.core.probes import probe_auc, probe_readings, readings_and_probes
from neuroplastic.core.training import evaluate
from neuroplastic.data.concept import IGNORE_CONCEPT
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.pipeline import run_experiment
from neuroplastic.store.rundir import RunDir, stage_names

if not os.environ.get("CI"):  # under CI the [erasure] extra is installed: a missing one fails
    pytest.importorskip("concept_erasure", reason='pip install "neuroplastic[erasure]" for LEACE')


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def leace_run(tmp_path_factory):
    """A tiny run removing LOC by LEACE at both layers, its base weights kept."""
    out = tmp_path_factory.mktemp("leace-run")
    summary = run_experiment(
        tiny_config(removal="leace"), out, progress=False, log=quiet, keep_base=True
    )
    return out, summary


def base_setup(out, scratch):
    """The run's own set-up (into ``scratch``) with the base weights it kept, in eval mode:
    the model with its head, and the run's sentences encoded as the run encodes them."""
    from neuroplastic.experiment.pipeline import _setup
    from neuroplastic.store.checkpoint import Checkpointer, load_weights

    run = RunDir(out)
    config = ExperimentConfig.load(run.config_path)
    setup = _setup(config, Checkpointer(RunDir(scratch)), False, quiet)
    load_weights(setup.module, run.weights_path("concept", "base"))
    setup.module.eval()
    return setup


def base_of(out, scratch):
    """The run's base model in eval mode and its probe sentences (:func:`base_setup`)."""
    setup = base_setup(out, scratch)
    return setup.model, setup.probe_data


@pytest.mark.slow
def test_the_erasure_is_fitted_on_the_base_weights_and_saved_with_the_run(leace_run, tmp_path):
    out, summary = leace_run
    run = RunDir(out)
    saved = LinearErasure.load(run.removal_path("concept"))
    model, data = base_of(out, tmp_path / "scratch")
    refit = fit_leace(model, data, "LOC", [0, 1])
    assert saved.kind == "leace" and saved.layers == [0, 1]
    for layer in saved.layers:
        for part in ("left", "right", "bias"):
            assert torch.allclose(getattr(saved, part)[layer], getattr(refit, part)[layer])
    for arm in ("concept", "random"):
        assert run.manifest.matches(run.removal_path(arm))  # a result, listed
        assert len(run.neurons(arm)) == 0  # an erasure silences no neuron
    control = LinearErasure.load(run.removal_path("random"))
    assert control.kind == "random" and control.layers == saved.layers
    assert control.rank == saved.rank == 1
    for layer in control.layers:  # an orthonormal projection, not the concept's direction
        q = control.left[layer]
        assert torch.allclose(q.T @ q, torch.eye(1), atol=1e-5)
    arms = summary["arms"]
    assert arms["concept"]["removal"]["kind"] == "leace"
    removal = dict(arms["random"]["removal"])  # (a copy: the fixture's summary is shared)
    removed = removal.pop("removed_variance")
    assert removal == {
        "kind": "random",
        "layers": [0, 1],
        "rank": 1,
        "what": control.describe(),
    }
    assert arms["random"]["control"] == "matched-projection"
    # the control removes the share of each layer's variance the eraser removes (on the probe
    # sentences both were fitted on), as recorded in the summary and in the saved files
    concept_removed = arms["concept"]["removal"]["removed_variance"]
    assert set(removed) == set(concept_removed) == {"0", "1"}
    # (the tiny model's layer-1 eraser can be null once layer 0 is erased: a share of 0)
    assert 0 < concept_removed["0"] < 1
    for layer, share in concept_removed.items():
        assert 0 <= share < 1
        assert removed[layer] == pytest.approx(share, rel=1e-4, abs=1e-9)
        assert saved.removed[int(layer)] == pytest.approx(share)
        assert control.removed[int(layer)] == pytest.approx(removed[layer])
    assert "prediction" not in summary  # the neuron predictors need removed neurons


@pytest.mark.slow
def test_every_file_of_a_run_has_the_permissions_of_a_new_file(leace_run):
    """Readable by whoever the umask lets read a new file (a colleague on a shared file system),
    the erasure and the report's sentence activations included; and none left half-written."""
    out, _ = leace_run
    mask = os.umask(0)
    os.umask(mask)
    files = [path for path in out.rglob("*") if path.is_file() and path.name != ".lock"]
    names = {path.name for path in files}
    assert {"concept.safetensors", "sentence_activations.safetensors", "data.json"} <= names
    modes = {str(path.relative_to(out)): path.stat().st_mode & 0o777 for path in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~mask)
    assert not [name for name in names if name.endswith(".tmp")]


@pytest.mark.slow
def test_every_arm_retrains_and_is_evaluated_with_its_erasure_held(leace_run, tmp_path):
    out, summary = leace_run
    for arm in ("concept", "random"):
        stages = summary["arms"][arm]["stages"]
        assert [s["stage"] for s in stages] == stage_names(2)
        assert [s["step"] for s in stages] == [0, 0, 3, 6]
        assert all(set(s["readable"]) == {"0", "1"} for s in stages)
    # one base model for both arms: they differ in what they hold and nothing else
    base = {arm: summary["arms"][arm]["stages"][0]["f1"] for arm in ("concept", "random")}
    assert base["concept"] == base["random"]
    # The pruned stage, by hand: the kept base weights scored with each arm's saved erasure
    # held, and the probes fitted on the erased stream of one half of the validation
    # sentences (a seeded hash, none of the probe sentences the eraser was fitted on) and
    # scored on the other half.
    setup = base_setup(out, tmp_path / "scratch")
    run = RunDir(out)
    split = split_probe(len(setup.validation_data), 0, salt="readout")
    assert not set(split.predict) & set(split.truth)
    assert len(split.predict) + len(split.truth) == len(setup.validation_data)
    fit_half = setup.validation_data.subset(split.predict)
    score_half = setup.validation_data.subset(split.truth)
    # The base's own probes, fitted by hand on the kept base weights: every later stage reads
    # them unchanged (`<point>_fixed`), and at the base they are the stage's own readings.
    _, base_probes = readings_and_probes(setup.model, fit_half, score_half, "LOC", [0, 1])
    for arm in ("concept", "random"):
        recorded_base = summary["arms"][arm]["stages"][0]["probes"]
        for point in ("resid_post", "mlp_out"):
            assert recorded_base[point + "_fixed"] == recorded_base[point]
    for arm in ("concept", "random"):
        pruned = summary["arms"][arm]["stages"][1]
        assert pruned["probes"]["split"] == {
            "fit": "validation, hash half 0",
            "score": "validation, hash half 1",
            "n_fit": len(split.predict),
            "n_score": len(split.truth),
        }
        with erase(setup.model, LinearErasure.load(run.removal_path(arm))):
            scores = evaluate(setup.module, setup.validation_data, "ner", "LOC", progress=False)
            readable = probe_auc(setup.model, fit_half, score_half, "LOC", [0, 1])
            mlp = probe_readings(setup.model, fit_half, score_half, "LOC", [0, 1])["mlp_out"]
            fixed, _ = readings_and_probes(
                setup.model, fit_half, score_half, "LOC", [0, 1], fixed=base_probes
            )
            # the head's own score on the scoring half, by hand: its log-odds of LOC's tags
            head_scores, head_labels = [], []
            for batch in score_half.batches(8):
                with torch.no_grad():
                    logits = setup.module(batch.tokens, batch.attention_mask)
                real = batch.concept_labels != IGNORE_CONCEPT
                loc = [i for i, t in enumerate(score_half.tag_names) if t.endswith("-LOC")]
                others = [i for i in range(len(score_half.tag_names)) if i not in loc]
                odds = logits[..., loc].logsumexp(-1) - logits[..., others].logsumexp(-1)
                head_scores.append(odds[real])
                head_labels.append(batch.concept_labels[real] == score_half.label_id("LOC"))
        scores_by_hand = torch.cat(head_scores).numpy()
        positive = torch.cat(head_labels).numpy()
        ranks = rankdata(scores_by_hand)
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        head_auc = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        assert pruned["probes"]["head"]["1"]["auc"] == pytest.approx(head_auc, abs=1e-6)
        assert scores.scores["f1"] == pytest.approx(pruned["f1"], abs=1e-12)
        assert {str(k): v for k, v in readable.items()} == pytest.approx(
            pruned["readable"], abs=1e-4
        )
        for layer in ("0", "1"):
            recorded = pruned["probes"]["resid_post"][layer]
            assert recorded["auc"] == pruned["readable"][layer]  # the raw AUC, its sign kept
            assert recorded["sign_free"] == max(recorded["auc"], 1 - recorded["auc"])
            assert pruned["probes"]["mlp_out"][layer]["auc"] == pytest.approx(
                mlp[int(layer)]["auc"], abs=1e-4
            )
            for point in ("resid_post_fixed", "mlp_out_fixed"):
                assert pruned["probes"][point][layer]["auc"] == pytest.approx(
                    fixed[point][int(layer)]["auc"], abs=1e-4
                ), (arm, point, layer)


@pytest.mark.slow
def test_a_removed_hook_stops_the_run(tmp_path, monkeypatch):
    """Something removing the erasure's hooks during retraining is caught at the next
    evaluation: the run stops with a clear error, not a measure of an unerased model."""
    from neuroplastic.core.training import Trainer

    real_run = Trainer.run

    def run_then_drop_hooks(self, n_steps, on_step=None, progress=True, description=""):
        losses = real_run(self, n_steps, on_step, progress, description)
        if "retrain" in description:
            model = self.module.model
            model.reset_hooks(including_permanent=True)
        return losses

    monkeypatch.setattr(Trainer, "run", run_then_drop_hooks)
    with pytest.raises(NeuroplasticError, match="no longer all held"):
        run_experiment(
            tiny_config(removal="direction"), tmp_path / "run", progress=False, log=quiet
        )


@pytest.mark.slow
def test_a_killed_erasure_run_resumes_to_the_same_summary(leace_run, tmp_path, monkeypatch):
    from kills import killed_then_resumed

    _, expected = leace_run
    resumed = killed_then_resumed(
        monkeypatch, tmp_path / "run", tiny_config(removal="leace"), "random", "retrain-1",
        "mid-training",
    )  # fmt: skip
    assert json.dumps(resumed, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.slow
def test_a_direction_run_at_chosen_layers_holds_the_projection_there(tmp_path):
    out = tmp_path / "run"
    summary = run_experiment(
        tiny_config(removal="direction", removal_layers="1", baseline="none"),
        out,
        progress=False,
        log=quiet,
        keep_base=True,
    )
    saved = LinearErasure.load(RunDir(out).removal_path("concept"))
    assert saved.kind == "direction" and saved.layers == [1]
    assert list(summary["arms"]) == ["concept"]
    model, data = base_of(out, tmp_path / "scratch")
    assert torch.allclose(fit_direction(model, data, "LOC", [1]).left[1], saved.left[1], atol=1e-6)
    # held, the direction is gone from layer 1's residual stream on every real token
    seen = {}
    batch = data.collate(list(range(8)))
    with (
        erase(model, saved),
        model.hooks(
            fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: seen.update(x=x.detach()))]
        ),
    ):
        model(batch.tokens, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    assert float((seen["x"][real] @ saved.left[1][:, 0]).abs().max()) < 1e-4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"removal": "leace", "rounds": 2}, "--rounds acts on removed neurons"),
        ({"removal": "leace", "preempt": "gradient"}, "--preempt acts on removed neurons"),
        ({"removal": "direction", "mode": "regrow"}, "--mode regrow acts on removed neurons"),
        ({"removal_layers": "0"}, "give --removal leace or direction too"),
        ({"removal": "leace", "removal_layers": "first"}, "'all' or layer indices"),
        ({"removal": "erase"}, "removal must be one of neurons, leace, direction"),
    ],
)
def test_settings_an_erasure_cannot_honour_are_refused(settings, message):
    with pytest.raises(NeuroplasticError, match=message):
        tiny_config(**settings)


def test_a_layer_the_model_lacks_is_refused_before_any_training(tmp_path):
    with pytest.raises(NeuroplasticError, match="names layer 5, but the model has 2 layers"):
        run_experiment(
            tiny_config(removal="leace", removal_layers="0,5"), tmp_path / "run", progress=False,
            log=quiet,
        )  # fmt: skip
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_the_command_line_takes_the_removal(tmp_path):
    from neuroplastic.cli import main

    code = main(
        [
            "run", "--out", str(tmp_path / "run"), "--model", "tiny-bert",
            "--train-sentences", "96", "--validation-sentences", "32", "--probe-sentences", "40",
            "--base-steps", "6", "--stages", "1", "--stage-steps", "2", "--batch-size", "8",
            "--eval-grid", "uniform", "--removal", "direction", "--removal-layers", "0",
            "--no-report", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["removal"], config["removal_layers"]) == ("direction", "0")
    assert LinearErasure.load(RunDir(tmp_path / "run").removal_path("concept")).layers == [0]


@pytest.mark.slow
def test_an_unfinished_run_of_an_older_format_is_not_resumed(leace_run, tmp_path):
    """Its stages' probes and control differ from this release's: resuming it would mix the
    two in one summary. A finished one adds nothing and is let through."""
    import shutil

    out, _ = leace_run
    copy = tmp_path / "older"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "format": 1}))
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").unlink()
    with pytest.raises(NeuroplasticError, match="format 1.*cannot be resumed without mixing"):
        run_experiment(tiny_config(removal="leace"), copy, progress=False, log=quiet)
    (copy / "summary.json").write_text(json.dumps(summary))
    from neuroplastic.store.checkpoint import Checkpointer

    with Checkpointer(RunDir(copy)) as store:  # the check alone: finished, so let through
        store.check_config(tiny_config(removal="leace"))
