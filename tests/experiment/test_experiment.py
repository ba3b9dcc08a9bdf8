import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from kills import SimulatedKill, kill_at, killed_then_resumed
from tiny import TINY, quiet, tiny_config

import neuroplastic.experiment.loading as loading
import neuroplastic.experiment.pipeline as experiment
import neuroplastic.experiment.setup as experiment_setup
from neuroplastic.config import ExperimentConfig
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.training import Trainer
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes
from neuroplastic.store.rundir import RunDir, stage_names


@pytest.fixture
def reference(tiny_run):
    return tiny_run


def test_stage_loop_and_outputs(reference):
    out, summary = reference
    run = RunDir(out)
    assert set(summary["arms"]) == {"concept", "random"}
    for arm, result in summary["arms"].items():
        assert [s["stage"] for s in result["stages"]] == stage_names(2)
        assert [s["step"] for s in result["stages"]] == [0, 0, 3, 6]
        assert set(result["stages"][0]["f1"]) == {"overall", "LOC", "PER", "ORG", "MISC"}
        assert run.stages(arm) == stage_names(2)
        assert result["neurons"] == len(run.neurons(arm))
    concept, random = run.neurons("concept"), run.neurons("random")
    assert concept.per_layer_counts() == random.per_layer_counts()
    assert concept != random
    assert json.loads(run.config_path.read_text()) == tiny_config().to_run_file()
    assert len(run.metrics()) == 8  # base + pruned + 2 retrain stages, per arm
    stage = run.stage("concept", "retrain-2")
    assert stage.ranking.scores.shape == (2, 64)
    assert {"layer", "neuron", "k", "value", "token", "label"} <= set(stage.top_tokens.columns)
    assert not list(out.rglob("*.tmp"))


def test_the_pruned_stage_is_the_base_model_with_its_top_neurons_zeroed(tmp_path):
    """By hand from what the run kept: the held set is the top 10% of the base ranking's
    scores, and the pruned stage's F1 is the base weights scored under those neurons' hooks.
    A base long enough that LOC is learned, so that the ablation moves its F1."""
    from neuroplastic.core.ablation import ablate
    from neuroplastic.core.training import evaluate
    from neuroplastic.experiment.pipeline import _setup
    from neuroplastic.store.checkpoint import Checkpointer, load_weights

    config = tiny_config(
        base_steps=40, learning_rate=1e-2, stages=1, baseline="none", plateau_every=0
    )
    summary = experiment.run_experiment(config, tmp_path / "run", progress=False, log=quiet,
                                        keep_base=True)  # fmt: skip
    run = RunDir(tmp_path / "run")
    scores = run.stage("concept", "base").ranking.scores
    k = round(0.1 * scores.numel())
    top = scores.flatten().topk(k).indices
    by_hand = {(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in top}
    held = run.neurons("concept")
    assert len(held) == k and set(held.neurons) == by_hand

    setup = _setup(ExperimentConfig.load(run.config_path), Checkpointer(RunDir(tmp_path / "s")),
                   False, quiet)  # fmt: skip
    load_weights(setup.module, run.weights_path("concept", "base"))
    base, pruned = summary["arms"]["concept"]["stages"][:2]
    plain = evaluate(setup.module, setup.validation_data, "ner", "LOC", progress=False)
    with ablate(setup.model, held):
        ablated = evaluate(setup.module, setup.validation_data, "ner", "LOC", progress=False)
    assert plain.scores["f1"] == pytest.approx(base["f1"], abs=1e-12)
    assert ablated.scores["f1"] == pytest.approx(pruned["f1"], abs=1e-12)
    # LOC is learned a little (0.13 here) and the ablation moves it (to 0.10): the equality
    # above could not hold by both being zero.
    assert base["f1"]["LOC"] > 0.1 and pruned["f1"]["LOC"] != base["f1"]["LOC"]


def test_held_neurons_stay_dead_in_later_rankings(reference):
    out, _ = reference
    run = RunDir(out)
    mask = run.neurons("concept").mask()
    stats = run.stage("concept", "retrain-2").stats
    assert (stats.sum[:, mask] == 0).all() and (stats.top_values[mask] == 0).all()


# Every stage, killed mid-training, after its training (before anything is written), or
# between its weights and its completion marker (a torn stage).
KILL_POINTS = [
    ("concept", "base", "mid-training"),
    ("concept", "base", "before"),
    ("concept", "pruned", "after-weights"),
    ("concept", "retrain-1", "before"),
    ("concept", "retrain-2", "mid-training"),
    ("concept", "retrain-2", "after-weights"),
    ("random", "pruned", "before"),
    ("random", "retrain-1", "after-weights"),
    ("random", "retrain-2", "mid-training"),
    ("random", "retrain-2", "before"),
]


@pytest.mark.slow  # kills and resumptions: several runs each
@pytest.mark.parametrize("arm, stage, when", KILL_POINTS)
def test_resume_after_a_kill_in_any_stage(reference, tmp_path, monkeypatch, arm, stage, when):
    _, expected = reference
    resumed = killed_then_resumed(monkeypatch, tmp_path, tiny_config(), arm, stage, when)
    assert resumed == expected
    # A complete run keeps no weights or optimizer state: resuming it needs none.
    assert not list((tmp_path / "state").rglob("*.pt"))
    assert not list((tmp_path / "state").rglob("*.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent, code, says",
    [
        (signal.SIGKILL, -signal.SIGKILL, None),
        # a scheduler's pre-emption: unwound as an interrupt is, one line, resumable
        (signal.SIGTERM, 143, "neuroplastic run: terminated; rerun the same command to resume"),
    ],
)
def test_a_signal_then_rerun_gives_the_same_summary(reference, tmp_path, sent, code, says):
    _, expected = reference
    args = [
        sys.executable,
        "-m",
        "neuroplastic.cli",
        "run",
        "--out",
        str(tmp_path),
        "--quiet",
        "--no-report",
    ]
    for name, value in TINY.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = tmp_path / "state" / "concept" / "pruned.json"
    deadline = time.time() + 120
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, sent)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    if says:  # one line, no traceback
        assert stderr.strip() == says
    assert not (tmp_path / "summary.json").exists()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(expected))


def test_a_different_config_is_refused(reference):
    out, _ = reference
    with pytest.raises(NeuroplasticError, match=r"different config.*learning_rate"):
        experiment.run_experiment(tiny_config(learning_rate=0.5), out, progress=False, log=quiet)


def test_nan_loss_stops_and_keeps_completed_stages(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = experiment.tagging_loss

    def poisoned(module, batch):
        calls["n"] += 1
        loss = real(module, batch)
        return loss * float("nan") if calls["n"] > TINY["base_steps"] else loss

    # where the run looks its loss up (Setup.loss_fn)
    monkeypatch.setattr(experiment_setup, "tagging_loss", poisoned)
    with pytest.raises(NeuroplasticError, match=r"\[concept\] retrain-1: the loss became nan"):
        experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet)
    run = RunDir(tmp_path)
    assert run.stages("concept") == ["base", "pruned"]
    assert list(run.metrics()["stage"]) == ["base", "pruned", "base"]  # random arm shares base


def test_regrow_mode_runs_and_neurons_can_return(tmp_path):
    summary = experiment.run_experiment(
        tiny_config(mode="regrow", baseline="none", stages=1), tmp_path, progress=False, log=quiet
    )
    assert list(summary["arms"]) == ["concept"]
    run = RunDir(tmp_path)
    mask = run.neurons("concept").mask()
    assert (run.stage("concept", "pruned").stats.top_values[mask] == 0).all()
    assert (run.stage("concept", "retrain-1").stats.top_values[mask] != 0).any()


def test_causal_lm_task_reports_concept_and_other_losses(tmp_path):
    summary = experiment.run_experiment(
        tiny_config(model="tiny-gpt2", task="lm", stages=1, baseline="none"),
        tmp_path,
        progress=False,
        log=quiet,
    )
    stages = summary["arms"]["concept"]["stages"]
    assert [s["stage"] for s in stages] == ["base", "pruned", "retrain-1"]
    assert all(
        set(s["lm_loss"]) == {"concept", "other"} and s["lm_loss"]["concept"] > 0 for s in stages
    )
    with pytest.raises(NeuroplasticError, match="needs a decoder"):
        experiment.run_experiment(
            tiny_config(task="lm"), tmp_path / "bert", progress=False, log=quiet
        )


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path, monkeypatch):
    target = tmp_path / "artifact.json"
    atomic_write_bytes(target, b"old")

    def crash(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(NeuroplasticError, match=r"cannot write .*artifact.json: No space left"):
        atomic_write_bytes(target, b"new and longer")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_resumes(reference, tmp_path, monkeypatch):
    _, expected = reference
    real = os.replace

    def full_at_retrain_2(source, target):
        if "retrain-2" in str(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(os, "replace", full_at_retrain_2)
    with pytest.raises(NeuroplasticError, match="free some space and rerun the same command"):
        experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet)
    monkeypatch.undo()
    assert RunDir(tmp_path).stages("concept") == ["base", "pruned", "retrain-1"]
    assert not list(tmp_path.rglob("*.tmp"))
    resumed = experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet)
    assert resumed == expected


def test_a_failed_start_leaves_the_directory_usable(tmp_path):
    with pytest.raises(NeuroplasticError, match="unknown concept label 'LCO'"):
        experiment.run_experiment(tiny_config(concept="LCO"), tmp_path, progress=False, log=quiet)
    assert not (tmp_path / "config.json").exists()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / ".base.json.123.tmp").write_text("torn")
    summary = experiment.run_experiment(
        tiny_config(stages=1, baseline="none", eval_every=3), tmp_path, progress=False, log=quiet
    )
    assert not list(tmp_path.rglob("*.tmp"))
    # Statistics come from the probe sentences, not the validation sentences F1 is taken on.
    assert len(RunDir(tmp_path).sentences()) == tiny_config().probe_sentences
    stages = list(RunDir(tmp_path).metrics()["stage"])
    assert stages == ["base", "pruned", "retrain-1"]  # stage_steps 3: no inner evaluation
    assert RunDir(tmp_path).metrics()["step"].tolist() == [0, 0, 3]
    assert [s["stage"] for s in summary["arms"]["concept"]["stages"]] == [
        "base",
        "pruned",
        "retrain-1",
    ]


def test_bad_settings_are_explained():
    with pytest.raises(NeuroplasticError, match="mode must be one of hold, regrow"):
        ExperimentConfig(mode="keep")
    with pytest.raises(NeuroplasticError, match="unknown setting"):
        ExperimentConfig.from_dict({"modle": "gpt2", "seed": 1})
    model_config = {"hidden_size": 8, "model_type": "bert", "vocab_size": 9, "a": 1, "b": 2}
    with pytest.raises(NeuroplasticError, match=r"not a neuroplastic config: none of its keys "
                       r"\(a, b, hidden_size, model_type, \.\.\.\) is a setting"):  # fmt: skip
        ExperimentConfig.from_dict(model_config, source="hf/config.json")
    with pytest.raises(NeuroplasticError, match="fraction must be float, got '0.1'"):
        ExperimentConfig.from_dict({"fraction": "0.1"})
    with pytest.raises(NeuroplasticError, match="stages must be int, got 2.5"):
        ExperimentConfig.from_dict({"stages": 2.5})
    with pytest.raises(NeuroplasticError, match="a JSON object of settings, got list"):
        ExperimentConfig.from_dict([1, 2])
    with pytest.raises(NeuroplasticError, match="unknown ranking method 'oracle'"):
        ExperimentConfig(method="oracle")
    assert ExperimentConfig.from_dict({"fraction": 1}).fraction == 1


def test_arms_are_paired_losses_equal_step_for_step_when_the_sets_are_equal(tmp_path, monkeypatch):
    # With the control forced to hold the concept arm's own neurons, the two arms must be the
    # same computation: same batches, order, dropout masks and schedule, so bitwise-equal losses.
    monkeypatch.setattr(NeuronSet, "random_matching", lambda self, seed=0: self)
    losses: dict[str, list[float]] = {"concept": [], "random": []}
    real_run = Trainer.run

    def recording(self, n_steps, on_step=None, progress=True, description=""):
        result = real_run(self, n_steps, on_step, progress, description)
        for arm in losses:
            if description.startswith(f"[{arm}]"):
                losses[arm] += result
        return result

    monkeypatch.setattr(Trainer, "run", recording)
    summary = experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet)
    assert len(losses["concept"]) == 2 * TINY["stage_steps"]
    assert losses["concept"] == losses["random"]
    concept, random = (summary["arms"][a]["stages"] for a in ("concept", "random"))
    for a, b in zip(concept, random, strict=True):
        assert a["f1"] == b["f1"]
    assert all(v == 0 for s in concept for v in s["gap_to_control"].values())


def test_gaps_to_base_and_to_the_paired_control(reference):
    _, summary = reference
    concept, random = (summary["arms"][a]["stages"] for a in ("concept", "random"))
    base = concept[0]["f1"]
    for entry, control in zip(concept, random, strict=True):
        for entity, value in entry["f1"].items():
            assert entry["gap_to_base"][entity] == pytest.approx(value - base[entity])
            assert entry["gap_to_control"][entity] == pytest.approx(value - control["f1"][entity])
    assert "gap_to_control" not in random[0]
    assert summary["arms"]["random"]["overlap_with_concept"] == 0
    assert set(summary["data"]["validation_seen_in_train"]) == {"LOC", "PER", "ORG", "MISC"}
    # The embedded corpus draws names per split: nothing to remember from training.
    for split in ("validation_seen_in_train", "probe_seen_in_train"):
        assert all(v["seen"] == 0 for v in summary["data"][split].values())


def test_base_fine_tuning_stops_on_a_probe_loss_plateau(tmp_path):
    # Any improvement under 99% counts as none: the second check finds a plateau.
    config = tiny_config(
        base_steps=40, plateau_every=2, plateau_patience=1, plateau_tolerance=0.99,
        baseline="none", stages=1, stage_steps=4, eval_every=2,
    )  # fmt: skip
    summary = experiment.run_experiment(config, tmp_path, progress=False, log=quiet)
    assert summary["base"]["stopped"] == "plateau"
    assert summary["base"]["steps"] == 4
    assert [step for step, _ in summary["base"]["probe_loss"]] == [2, 4]
    metrics = RunDir(tmp_path).metrics()
    assert metrics["stage"].tolist() == ["base", "pruned", "retrain-1@2", "retrain-1"]
    assert metrics["step"].tolist() == [0, 0, 2, 4]  # retraining steps count from pruning
    capped = experiment.run_experiment(
        tiny_config(plateau_every=0, baseline="none", stages=1), tmp_path / "cap",
        progress=False, log=quiet,
    )  # fmt: skip
    assert capped["base"] == {"steps": TINY["base_steps"], "stopped": "cap", "probe_loss": []}


def test_probe_and_training_sentences_never_overlap(tmp_path):
    words = ["Paris", "is", "big", "."]
    lines = []
    for i in range(60):
        lines += [f"{w}{i if j == 1 else ''} {'B-LOC' if j == 0 else 'O'}" for j, w in
                  enumerate(words)] + [""]  # fmt: skip
    (tmp_path / "train.txt").write_text("\n".join(lines))
    (tmp_path / "validation.txt").write_text("\n".join(lines[:50]))
    config = tiny_config(dataset=str(tmp_path), train_sentences=40, probe_sentences=30)
    with pytest.raises(NeuroplasticError, match=r"has 60 sentences.*40.*30.*70 in all"):
        experiment.run_experiment(config, tmp_path / "run", progress=False, log=quiet)
    store = experiment.Checkpointer(RunDir(tmp_path / "run2"))
    setup = experiment._setup(
        tiny_config(dataset=str(tmp_path), train_sentences=40, probe_sentences=20),
        store, progress=False, log=quiet,
    )  # fmt: skip
    train = {s.words for s in setup.train_data.sentences}
    probe = {s.words for s in setup.probe_data.sentences}
    assert len(train) == 40 and len(probe) == 20 and not train & probe
    # Validation repeats training sentences here, and the run says so.
    assert setup.data_overlap["validation_seen_in_train"]["LOC"]["seen"] > 0


def test_a_run_whose_data_changed_is_not_resumed(tmp_path):
    """Its stages describe other sentences: refused, its record of them left as it was; with
    the data restored, it goes on."""
    lines = []
    for i in range(60):
        lines += [f"Paris B-LOC\nis{i} O\nbig O\n. O\n"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("\n".join(lines))
    (data / "validation.txt").write_text("\n".join(lines[:50]))
    config = tiny_config(dataset=str(data), train_sentences=40, probe_sentences=20)
    run = RunDir(tmp_path / "run")
    experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    recorded = run.sentences_path.read_bytes()
    original = (data / "train.txt").read_text()
    (data / "train.txt").write_text(original.replace("big", "small"))
    with pytest.raises(NeuroplasticError, match=r"changed since the run in .*: 20 of its 20 probe"):
        experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    assert run.sentences_path.read_bytes() == recorded
    (data / "train.txt").write_text(original)
    experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    assert run.sentences_path.read_bytes() == recorded
    # Validation sentences are not in sentences.json: data.json tells.
    fingerprint = json.loads(run.data_path.read_text())
    assert fingerprint["train"]["sentences"] == 40 and fingerprint["probe"]["sentences"] == 20
    expected = hashlib.sha256()
    for line in lines[: config.validation_sentences]:  # 32 of the file's 50
        words, tags = zip(*(pair.split() for pair in line.strip().splitlines()), strict=True)
        expected.update(json.dumps([words, tags]).encode() + b"\n")
    validation = fingerprint["validation"]
    assert validation == {"sentences": 32, "sha256": expected.hexdigest()}
    (data / "validation.txt").write_text("\n".join(lines[:50]).replace("is3 ", "was3 "))
    with pytest.raises(NeuroplasticError, match=r"changed .*: the 32 validation sentences differ"):
        experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    (data / "validation.txt").write_text("\n".join(lines[:31]))
    with pytest.raises(NeuroplasticError, match=r"32 validation sentences then, 31 now; restore"):
        experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    assert json.loads(run.data_path.read_text()) == fingerprint


def test_a_run_without_a_readable_data_record_records_it(tmp_path, capsys):
    """An older run (no data.json) or a damaged one: the data given now is recorded, with a
    warning for the damaged record, and checked from then on."""
    config = tiny_config()
    run = RunDir(tmp_path / "run")
    experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    recorded = run.data_path.read_bytes()
    run.data_path.unlink()
    experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    assert run.data_path.read_bytes() == recorded
    run.data_path.write_text('{"train": ')
    experiment._setup(config, experiment.Checkpointer(run), progress=False, log=quiet)
    assert "data.json" in capsys.readouterr().err and run.data_path.read_bytes() == recorded


def test_a_dense_concept_set_gets_no_overlapping_control(tmp_path):
    dense = NeuronSet.of(2, 64, [(0, n) for n in range(60)] + [(1, 5)])
    with pytest.raises(NeuroplasticError, match=r"layer 0 has 60 of its 64.*random-global"):
        dense.random_matching(seed=0)
    control = dense.random_global(seed=0)
    assert len(control) == 61 and dense.overlap(control) == 0
    assert control.per_layer_counts()[1] >= 61 - 4  # only 4 neurons of layer 0 are outside
    with pytest.raises(NeuroplasticError, match="hold at most half"):
        NeuronSet.of(2, 64, [(0, n) for n in range(64)] + [(1, 0)]).random_global()
    # A per-layer count above half a layer: refused from the settings, before any training.
    with pytest.raises(NeuroplasticError, match=r"--count 40 per layer holds more than half"):
        experiment.run_experiment(
            tiny_config(selection="per-layer", count=40), tmp_path, progress=False, log=quiet
        )
    summary = experiment.run_experiment(
        tiny_config(baseline="random-global", stages=1), tmp_path / "global",
        progress=False, log=quiet,
    )  # fmt: skip
    assert summary["arms"]["random"]["overlap_with_concept"] == 0
    assert summary["arms"]["random"]["neurons"] == summary["arms"]["concept"]["neurons"]


def test_regrow_is_refused_for_relu_models(tmp_path, monkeypatch):
    from neuroplastic.core import models

    real = models.load_model

    def relu_model(*args, **kwargs):
        model = real(*args, **kwargs)
        model.cfg.act_fn = "relu"
        return model

    monkeypatch.setattr(loading, "load_model", relu_model)  # where _setup looks it up
    with pytest.raises(NeuroplasticError, match="relu MLP: its derivative at 0 is 0"):
        experiment.run_experiment(tiny_config(mode="regrow"), tmp_path, progress=False, log=quiet)
    assert not (tmp_path / "config.json").exists()


def test_a_resumption_with_another_process_count_is_noted(tmp_path, monkeypatch):
    """Stages computed by a launched run (their markers say 2 processes) resumed by one
    process: the run says the result will not be bit-identical, and the summary lists both."""
    kill = kill_at(monkeypatch, tmp_path, "concept", "retrain-1", "before")
    with pytest.raises(SimulatedKill):
        experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet, on_stage=kill)
    monkeypatch.undo()
    run = RunDir(tmp_path)
    for stage in ("base", "pruned"):  # as a 2-process launch writes them
        path = run.marker_path("concept", stage)
        path.write_text(json.dumps({**json.loads(path.read_text()), "processes": 2}))
    lines: list[str] = []
    summary = experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=lines.append)
    assert summary["processes"] == [1, 2]
    notes = [line for line in lines if line.startswith("note:")]
    assert notes and "pruned ran with 2 process(es), this run has 1" in notes[0]
    assert "not be bit-identical" in notes[0]
