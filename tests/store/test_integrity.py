"""A run directory never gives silently wrong results: one writer at a time (an exclusive lock),
stages bound to the settings they were computed under (a config hash in every marker), files
checked against the run's manifest when resumed or reported, and reports that say what they
cannot show."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from kills import SimulatedKill
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import TINY, quiet, tiny_config

import neuroplastic.experiment.pipeline as experiment
from neuroplastic.config import RUN_FORMAT, ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.manifest import run_format
from neuroplastic.store.rundir import RunDir

KILLED_AT = ("random", "retrain-1")  # the run is killed as this stage ends, before its files


@pytest.fixture
def finished(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    return killed_run(tmp_path_factory.mktemp("killed"), *KILLED_AT)


def killed_run(out, arm, stage):
    """A tiny run killed as ``stage`` of ``arm`` ends, before anything of that stage is written."""

    def on_stage(event):
        if (event.arm, event.stage, event.moment) == (arm, stage, "trained"):
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        experiment.run_experiment(tiny_config(), out, progress=False, log=quiet, on_stage=on_stage)
    return out


def copy(source, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(source, target)
    return target


def snapshot(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def run_args(out, **overrides):
    args = ["run", "--out", str(out), "--quiet", "--no-report"]
    for name, value in {**TINY, **overrides}.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


# -- one writer at a time ----------------------------------------------------------------------
HOLD = """
import sys
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.manifest import run_format
from neuroplastic.store.rundir import RunDir
with Checkpointer(RunDir(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_locked_run_directory_refuses_a_second_run_and_report(finished, tmp_path, cli):
    _, expected = finished
    out = copy(finished[0], tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        # The holder's write in progress: a second start must not sweep it away.
        (out / "state" / ".pruned.json.abc123.tmp").write_text("in progress")
        before = snapshot(out)
        message = (
            f"{out} is in use by process {holder.pid} (another neuroplastic run); wait for it "
            "or use another --out"
        )
        code, _, stderr = cli(*run_args(out, fraction=0.25, seed=7, lr=0.5))
        assert (code, stderr.strip()) == (2, f"neuroplastic run: error: {message}")
        code, _, stderr = cli("report", out, "--similarity", "none")
        assert code == 2
        assert f"{out} is in use by process {holder.pid} (a neuroplastic run writing" in stderr
        assert snapshot(out) == before  # nothing read-and-rewritten, nothing deleted
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # The holder died without releasing anything: its PID is still in the lock file, but the
    # kernel dropped its lock, so the stale file blocks nothing.
    assert (out / ".lock").read_text().strip() == str(holder.pid)
    assert experiment.run_experiment(tiny_config(), out, progress=False, log=quiet) == expected
    assert not list(out.rglob("*.tmp"))


def test_the_lock_is_held_for_the_run_and_released_however_it_ends(tmp_path):
    run = RunDir(tmp_path)
    with Checkpointer(run):
        # flock locks belong to an open file description: a second one conflicts even here.
        with pytest.raises(NeuroplasticError, match=f"in use by process {os.getpid()} "):
            Checkpointer(run).lock()
    with pytest.raises(NeuroplasticError, match="unknown concept label 'LCO'"):
        experiment.run_experiment(tiny_config(concept="LCO"), tmp_path, progress=False, log=quiet)
    with Checkpointer(run):  # released on the error
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    assert (tmp_path / ".lock").read_text() == ""


# -- stages bound to their settings ------------------------------------------------------------
def test_every_stage_marker_records_the_hash_of_its_settings(finished):
    out, _ = finished
    output_options = ("device", "device_map", "save_checkpoints")
    # Settings added later are left out at their defaults, so older runs keep their hash.
    later = (
        *("dtype", "base_epochs", "stage_epochs"),
        *("rounds", "stop_below", "preempt", "preempt_count", "eval_grid"),
        *("naive", "relearn", "relearn_sentences", "relearn_lr"),
        *("removal", "removal_layers", "group_by_length"),
    )
    identity = {
        k: v for k, v in tiny_config().to_dict().items() if k not in (*output_options, *later)
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    markers = sorted((out / "state").glob("*/*.json"))
    assert len(markers) == 7  # base, then pruned and 2 retraining stages per arm
    assert {json.loads(m.read_text())["config_hash"] for m in markers} == {expected}
    # Output options may change on resumption; 1 and 1.0 are one fraction.
    assert tiny_config(device="cuda", save_checkpoints=True).identity_hash() == expected
    assert tiny_config(device_map="auto").identity_hash() == expected
    assert tiny_config(dtype="bfloat16").identity_hash() != expected
    assert tiny_config(stage_epochs=2.0).identity_hash() != expected
    one, one_point_zero = ExperimentConfig(fraction=1), ExperimentConfig(fraction=1.0)
    assert one.identity_hash() == one_point_zero.identity_hash()
    assert tiny_config(seed=7).identity_hash() != expected


def test_results_without_their_config_json_are_refused(finished, tmp_path, cli):
    out = copy(finished[0], tmp_path)
    (out / "config.json").unlink()
    before = snapshot(out)
    for overrides in ({"fraction": 0.25, "seed": 7, "lr": 0.5}, {}):
        code, _, stderr = cli(*run_args(out, **overrides))
        # 7 stage markers, 24 stage files, 2 neuron sets, summary.json and metrics.jsonl
        assert (code, stderr.strip()) == (
            2,
            f"neuroplastic run: error: {out} holds results of a run (state/concept/base.json, "
            "state/concept/pruned.json and 48 more) but no config.json, so the settings they "
            "were computed under cannot be checked; restore its config.json, or use another "
            "--out (nothing was changed)",
        )
        assert snapshot(out) == before


def test_a_stage_computed_under_other_settings_is_refused(finished, tmp_path):
    out = copy(finished[0], tmp_path)
    other = tiny_config(fraction=0.25, seed=7, learning_rate=0.5)
    (out / "config.json").write_text(json.dumps(other.to_dict()))  # config.json replaced
    before = snapshot(out)
    recorded = tiny_config().identity_hash()[:12]
    with pytest.raises(NeuroplasticError) as refused:
        experiment.run_experiment(other, out, progress=False, log=quiet)
    assert str(refused.value) == (
        f"{out / 'state/concept/base.json'} was computed under other settings (config hash "
        f"{recorded}) than config.json and this run's ({other.identity_hash()[:12]}): "
        "config.json was replaced after that stage ran; use another --out (nothing was changed)"
    )
    assert snapshot(out) == before


# -- the manifest ------------------------------------------------------------------------------
def test_the_manifest_lists_every_stage_file_as_written(finished):
    out, _ = finished
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "stages").rglob("*.*"))
    # arms x stages x (ranking, stats, top tokens, the probe halves' moments), each arm's
    # predictions (the control's are the predictors' null), the concept arm's causal truth and
    # the neuron views' whole-sentence activations (each arm's first and last stage)
    assert len(on_disk) == 2 * 4 * 4 + 2 + 1 + 2 * 2
    # A complete run has released its weights and trainer state, and forgot them.
    assert sorted(manifest) == on_disk
    for name, entry in manifest.items():
        data = (out / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_killed_run_resumes_from_files_that_match_its_manifest(killed, finished, tmp_path):
    out = copy(killed, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    # The weights and trainer state the random arm resumes from, and the base's weights.
    assert {n for n in manifest if n.startswith("state/")} == {
        "state/concept/base.safetensors",
        "state/concept/retrain-2.safetensors",
        "state/concept/retrain-2.trainer.pt",
        "state/random/pruned.safetensors",
        "state/random/pruned.trainer.pt",
    }
    resumed = experiment.run_experiment(tiny_config(), out, progress=False, log=quiet)
    assert resumed == finished[1]


def _bump_weights(path):
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, str(path))


def _bump_trainer(path):
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"][0]["lr"] *= 2  # still a valid optimizer state
    torch.save(state, path)


def _bump_parquet(path):
    frame = pd.read_parquet(path)
    frame.loc[0, "score"] += 1.0
    frame.to_parquet(path, index=False)


def _bump_stats(path):
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors["sum"] = tensors["sum"].clone()
    tensors["sum"].view(-1)[0] += 1.0
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize(
    "name, bump",
    [
        ("state/random/pruned.safetensors", _bump_weights),
        ("state/random/pruned.trainer.pt", _bump_trainer),
        ("stages/concept/base/ranking.parquet", _bump_parquet),
    ],
)
def test_a_resumption_refuses_a_file_changed_after_the_run_wrote_it(killed, tmp_path, name, bump):
    out = copy(killed, tmp_path)
    bump(out / name)
    with pytest.raises(NeuroplasticError) as refused:
        experiment.run_experiment(tiny_config(), out, progress=False, log=quiet)
    message = str(refused.value)
    assert message.startswith(f"{out / name} does not match the run's manifest (")
    assert message.endswith(
        "): it was changed after the run wrote it; restore it or rerun into a new --out"
    )
    assert (out / name).is_file()  # refused, not deleted
    assert not (out / "state" / "random" / "retrain-1.json").exists()


@pytest.mark.parametrize(
    "name, bump",
    [
        ("stages/concept/retrain-1/stats.safetensors", _bump_stats),
        ("stages/random/retrain-2/ranking.parquet", _bump_parquet),
    ],
)
def test_report_refuses_a_stage_file_changed_after_the_run(finished, tmp_path, cli, name, bump):
    out = copy(finished[0], tmp_path)
    bump(out / name)
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 2
    assert f"error: {out / name} does not match the run's manifest (sha256 " in stderr
    assert "it was changed after the run wrote it; restore it or rerun into a new --out" in stderr
    assert not (out / "report.html").exists()


# -- reports say what they cannot show ---------------------------------------------------------
def _warnings_on_page(out):
    page = (out / "report.html").read_text(encoding="utf-8")
    head = page[: page.index("<h2>Key numbers</h2>")]
    return [chunk.split("</p>")[0] for chunk in head.split('<p class="np-warning"')[1:]]


def test_report_of_an_unfinished_run_names_the_missing_stages(killed, tmp_path, cli):
    out = copy(killed, tmp_path)
    code, stdout, stderr = cli("report", out, "--similarity", "none")
    expected = (
        "Unfinished run: these stages have not been computed yet: random arm: retrain-1, "
        "retrain-2. This report shows the stages done so far; rerun `neuroplastic run --out "
        f"{out}` with the same settings to finish it."
    )
    assert code == 0 and stdout.strip() == f"report: {out / 'report.html'}"
    assert stderr.strip() == f"neuroplastic report: warning: {expected}"
    [shown] = _warnings_on_page(out)
    assert shown.endswith(">" + expected)
    assert RunDir(out).stages("random") == ["base", "pruned"]


def test_report_of_a_run_with_an_arm_at_its_base_alone_leaves_that_arm_out(tmp_path, cli):
    out = killed_run(tmp_path / "run", "random", "pruned")
    run = RunDir(out)
    assert run.stages("random") == ["base"] and len(run.stages("concept")) > 1
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 0 and "Unfinished run" in stderr
    expected = (
        "The random arm has only its base stage so far and is left out; rerun `neuroplastic "
        f"run --out {out}` to finish it."
    )
    assert any(shown.endswith(">" + expected) for shown in _warnings_on_page(out))


def test_report_says_a_deleted_stage_file_left_its_stage_out(finished, tmp_path, cli):
    out = copy(finished[0], tmp_path)
    (out / "stages/concept/retrain-1/stats.safetensors").unlink()
    code, _, stderr = cli("report", out, "--similarity", "none")
    expected = (
        "Stage retrain-1 of the concept arm is left out of this report: "
        "stages/concept/retrain-1/stats.safetensors is missing, deleted after the run wrote "
        "it; restore it or rerun into a new --out."
    )
    assert code == 0
    assert stderr.strip() == f"neuroplastic report: warning: {expected}"  # finished: only this
    [shown] = _warnings_on_page(out)
    assert shown.endswith(">" + expected)
    assert RunDir(out).stages("concept") == ["base", "pruned", "retrain-2"]


def _strip_config_hashes(out):
    for marker in (out / "state").glob("*/*.json"):
        data = json.loads(marker.read_text())
        del data["config_hash"]
        marker.write_text(json.dumps(data))


def _write_config(out, change):
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(change(config)))


def _without_format(config):
    return {k: v for k, v in config.items() if k != "format"}


def _refused_by_run_and_report(out, message, cli):
    with pytest.raises(NeuroplasticError) as refused:
        experiment.run_experiment(tiny_config(), out, progress=False, log=quiet)
    assert str(refused.value) == message
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert (code, stderr.strip()) == (2, f"neuroplastic report: error: {message}")


# With the hashes stripped too, the run's config.json still declares a format that has a
# manifest: it cannot be passed off as a run from before manifests.
@pytest.mark.parametrize("hashes", ["kept", "stripped"])
def test_a_deleted_manifest_is_refused(finished, tmp_path, cli, hashes):
    out = copy(finished[0], tmp_path)
    (out / "manifest.json").unlink()
    if hashes == "stripped":
        _strip_config_hashes(out)
    message = (
        f"{out / 'manifest.json'} is missing, though the run kept one: its files cannot be "
        "verified; restore it or rerun into a new --out"
    )
    _refused_by_run_and_report(out, message, cli)


def test_a_run_from_before_manifests_reports_as_it_is_and_is_not_resumed(
    killed, finished, tmp_path, cli
):
    """What an earlier version left: no manifest, no lock file, markers without a config hash,
    and no format version in config.json. Unfinished, it reports as it is, and `run` refuses
    to add this release's stages to it (its probes and erasure control were another
    release's) with the directory left as it was; finished, it is adopted as it is."""
    out = copy(killed, tmp_path)
    (out / "manifest.json").unlink()
    (out / ".lock").unlink()
    _strip_config_hashes(out)
    _write_config(out, _without_format)
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 0 and "Unfinished run" in stderr
    assert not (out / ".lock").exists()  # a report makes no lock file
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(NeuroplasticError, match="run-directory format 0.*new --out"):
        experiment.run_experiment(tiny_config(), out, progress=False, log=quiet)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: b for p, b in before.items() if p.name != ".lock"}

    done = copy(finished[0], tmp_path / "finished")
    (done / "manifest.json").unlink()
    (done / ".lock").unlink(missing_ok=True)
    _strip_config_hashes(done)
    _write_config(done, _without_format)
    summary = json.loads((done / "summary.json").read_text())
    assert experiment.run_experiment(tiny_config(), done, progress=False, log=quiet) == summary


def test_a_runs_config_declares_its_format(killed, tmp_path):
    out = copy(killed, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert next(iter(config.items())) == ("format", RUN_FORMAT)
    assert run_format(out) == RUN_FORMAT
    # Without the key (a run written before it), the format is read from what the run kept.
    _write_config(out, _without_format)
    assert run_format(out) == 1
    (out / "manifest.json").unlink()
    assert run_format(out) == 1  # its markers' config hashes
    _strip_config_hashes(out)
    assert run_format(out) == 0


def test_a_run_of_a_newer_format_is_refused_with_what_to_do(killed, tmp_path, cli):
    out = copy(killed, tmp_path)
    _write_config(out, lambda config: {**config, "format": RUN_FORMAT + 1})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    message = (
        f"{out / 'config.json'}: the run directory has format {RUN_FORMAT + 1}, written by a "
        f"newer neuroplastic (this one reads formats up to {RUN_FORMAT}); upgrade neuroplastic "
        "to read it"
    )
    _refused_by_run_and_report(out, message, cli)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing changed


# -- issue 40: a report never shows a run other than the one on disk ----------------------------
def test_report_refuses_a_config_edited_after_the_stages_ran(finished, tmp_path, cli):
    out = copy(finished[0], tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0
    (out / "config.json").write_text(json.dumps({**config, "seed": 1}))
    edited = tiny_config(seed=1).identity_hash()[:12]
    code, stdout, stderr = cli("report", out, "--similarity", "none")
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"neuroplastic report: error: {out / 'state/concept/base.json'} was computed under "
        f"other settings (config hash {tiny_config().identity_hash()[:12]}) than "
        f"{out / 'config.json'} holds ({edited}): config.json was changed after that stage ran, "
        "and its results would be shown beside the wrong settings; restore the run's "
        "config.json (its summary.json keeps the settings of a finished run)\n"
    )
    assert not (out / "report.html").exists()
    # `run` refuses the same directory (on config.json against its flags, then the hashes)
    assert cli(*run_args(out, seed=1))[0] == 2


def test_resuming_removes_the_report_of_the_unfinished_run(killed, tmp_path, cli):
    out = copy(killed, tmp_path)
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 0 and "Unfinished run" in (out / "report.html").read_text()
    code, _, _ = cli(*run_args(out))  # --no-report
    assert code == 0 and not (out / "report.html").exists()
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 0 and "Unfinished run" not in (out / "report.html").read_text()
