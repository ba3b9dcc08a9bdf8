"""A file the run's manifest lists, deleted: a resumption recomputes it from the weights the run
still keeps (byte-identical to the run never damaged), a finished run says in one line what is
lost, and what nothing can rebuild (the base) is refused before any change (issue 40).

Each case kills a tiny run at one point, deletes one file, and runs it again."""

import json

import pytest
from test_corrupt_files import one_line, same_stage_files
from test_integrity import copy, killed_run, run_args, snapshot
from tiny import quiet, tiny_config

import neuroplastic.experiment.pipeline as experiment
from neuroplastic.errors import NeuroplasticError

#: where each run is killed (as the stage's training ends, before anything of it is written),
#: and what is done then
KILLS = {
    "base-done": ("concept", "pruned"),  # the base only
    "concept-retrain-1-done": ("concept", "retrain-2"),  # the issue's: retraining recorded
    "concept-done": ("random", "retrain-1"),  # the concept arm and the control's pruned stage
}


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    runs = {}

    def get(point):
        if point not in runs:
            runs[point] = killed_run(tmp_path_factory.mktemp(point), *KILLS[point])
        return runs[point]

    return get


def resume(out, **overrides):
    warnings = []
    summary = experiment.run_experiment(
        tiny_config(**overrides), out, progress=False, log=quiet, warn=warnings.append
    )
    return summary, warnings


FROM_BASE = "recomputing the {arm} arm from the base weights (state/concept/base.safetensors)"
OWN = "recomputing stage {stage} of the {arm} arm from state/{owner}/{stage}.safetensors"

CASES = [
    # (kill point, deleted file, how the warning ends)
    ("base-done", "stages/concept/base/ranking.parquet", OWN, "concept", "base"),
    ("base-done", "stages/random/base/stats.safetensors", OWN, "random", "base"),
    # the case: no weights after the stage any more, so the arm from its base
    ("concept-retrain-1-done", "stages/concept/pruned/ranking.parquet", FROM_BASE, "concept", ""),
    ("concept-retrain-1-done", "stages/concept/pruned/predictions.safetensors", FROM_BASE,
     "concept", ""),
    ("concept-retrain-1-done", "stages/concept/retrain-1/halves.safetensors", OWN, "concept",
     "retrain-1"),
    ("concept-retrain-1-done", "state/concept/retrain-1.trainer.pt", FROM_BASE, "concept", ""),
    ("concept-retrain-1-done", "state/concept/retrain-1.safetensors", FROM_BASE, "concept", ""),
    ("concept-done", "stages/concept/retrain-2/causal.json", OWN, "concept", "retrain-2"),
    ("concept-done", "stages/concept/retrain-1/top_tokens.parquet", FROM_BASE, "concept", ""),
    ("concept-done", "stages/random/pruned/stats.safetensors", OWN, "random", "pruned"),
    ("concept-done", "stages/random/base/halves.safetensors", OWN, "random", "base"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("point, name, source, arm, stage", CASES)
def test_a_resumption_recomputes_a_deleted_file(
    killed, tiny_run, tmp_path, point, name, source, arm, stage
):
    out = copy(killed(point), tmp_path)
    (out / name).unlink()
    summary, warnings = resume(out)
    owner = "concept" if stage == "base" else arm
    assert warnings == [
        f"{out / name} is missing, though the run's manifest lists it (deleted after the run "
        f"wrote it); "
        + source.format(arm=arm, stage=stage, owner=owner)
        + ("" if source == OWN else ": its stages are computed again")
    ]
    # The same run as the one never damaged, to the byte.
    assert summary == tiny_run[1]
    assert same_stage_files(out, tiny_run[0])
    assert (out / "metrics.jsonl").read_bytes() == (tiny_run[0] / "metrics.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads((tiny_run[0] / "manifest.json").read_text())


@pytest.mark.slow
def test_a_deleted_stage_marker_before_a_recorded_stage_recomputes_the_arm(
    killed, tiny_run, tmp_path
):
    out = copy(killed("concept-retrain-1-done"), tmp_path)
    (out / "state/concept/pruned.json").unlink()
    summary, warnings = resume(out)
    assert warnings == [
        f"{out / 'state/concept/pruned.json'} is missing (deleted after the run wrote it), "
        "though later stages of the concept arm are recorded; "
        + FROM_BASE.format(arm="concept")
        + ": its stages are computed again"
    ]
    assert summary == tiny_run[1]
    assert same_stage_files(out, tiny_run[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["state/concept/base.safetensors", "state/concept/base.json"])
def test_the_deleted_base_is_refused_before_any_change(killed, tmp_path, name):
    out = copy(killed("concept-retrain-1-done"), tmp_path)
    (out / name).unlink()
    before = snapshot(out)
    with pytest.raises(NeuroplasticError) as refused:
        resume(out)
    message = str(refused.value)
    assert message.startswith(f"{out / name} is missing")
    assert "fine-tuned base model every later stage builds on" in message
    assert message.endswith("restore it, or rerun into a new --out")
    assert snapshot(out) == before


# -- a finished run ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_finished_run_names_a_deleted_stage_file_nothing_can_rebuild(tiny_run, tmp_path, cli):
    out = copy(tiny_run[0], tmp_path)
    name = "stages/concept/retrain-1/ranking.parquet"
    (out / name).unlink()
    code, _, stderr = cli(*run_args(out))
    assert code == 0
    one_line(
        stderr,
        f"neuroplastic: warning: {out / name} is missing, though the run's manifest lists it "
        "(deleted after the run wrote it); it cannot be rebuilt: the run no longer keeps the "
        "weights after that stage (--save-checkpoints keeps them), so its report leaves stage "
        "retrain-1 of the concept arm out; restore it, or rerun into a new --out to have it "
        "again",
        "",
    )
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 0
    assert "Stage retrain-1 of the concept arm is left out of this report" in stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stages/concept/base/ranking.parquet"])
def test_a_finished_run_refuses_a_deleted_base_stage(tiny_run, tmp_path, cli, name):
    out = copy(tiny_run[0], tmp_path)
    (out / name).unlink()
    before = snapshot(out)
    code, _, stderr = cli(*run_args(out))
    assert code == 2
    one_line(
        stderr,
        f"neuroplastic run: error: {out / name} is missing, though the run's manifest lists it "
        "(deleted after the run wrote it); the run no longer keeps the weights to recompute it "
        "from (--save-checkpoints keeps them), and the neuron sets come from it; restore it, "
        "or rerun into a new --out",
        "",
    )
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_finished_run_with_checkpoints_rebuilds_a_deleted_stage_file(tmp_path_factory):
    reference = tmp_path_factory.mktemp("checkpointed")
    expected = experiment.run_experiment(
        tiny_config(save_checkpoints=True), reference, progress=False, log=quiet
    )
    out = copy(reference, tmp_path_factory.mktemp("damaged"))
    for name in (
        "stages/random/retrain-1/top_tokens.parquet",
        "stages/concept/retrain-2/sentence_activations.safetensors",
    ):
        (out / name).unlink()
        summary, warnings = resume(out, save_checkpoints=True)
        stage = name.split("/")[2]
        arm = name.split("/")[1]
        assert warnings == [
            f"{out / name} is missing, though the run's manifest lists it (deleted after the "
            f"run wrote it); recomputing stage {stage} of the {arm} arm from "
            f"checkpoints/{arm}/{stage}.safetensors"
        ]
        assert summary == expected
        assert same_stage_files(out, reference)
