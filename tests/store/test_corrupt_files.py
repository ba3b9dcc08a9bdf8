"""Run files that cannot be read (cut to half their size, or overwritten with garbage) end
`neuroplastic run` and `neuroplastic report` in one line that names the file and what to do;
where the run kept what a file is computed from, `run` recomputes it and says so (issue 11).

One finished and one killed tiny run are built per module and copied per test."""

import json
import random
import shutil

import pytest
from kills import SimulatedKill
from test_integrity import copy, killed_run, run_args, snapshot
from tiny import quiet, tiny_config

import neuroplastic.experiment.pipeline as experiment
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.rundir import STAGE_FILES

HOW = ("truncated", "garbage")


def damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        cut = len(data) // 2
        # Cut inside a line (a cut at a line end leaves whole lines: another case).
        while b"\n" in data[cut - 1 : cut + 1]:
            cut -= 1
        path.write_bytes(data[:cut])
    else:  # the same size, no byte of the original format left
        path.write_bytes(random.Random(len(data)).randbytes(len(data)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    summary = experiment.run_experiment(tiny_config(), out, progress=False, log=quiet)
    return out, summary


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Killed as the random arm's retrain-1 ends: the base weights, the concept arm's last
    (retrain-2) and the random arm's last (pruned) weights and trainer states are kept."""
    return killed_run(tmp_path_factory.mktemp("killed"), "random", "retrain-1")


def one_line(stderr, start, end):
    """The whole of ``stderr`` is one line that starts and ends so."""
    assert stderr.count("\n") == 1, stderr
    line = stderr.strip()
    assert line.startswith(start), line
    assert line.endswith(end), line
    return line[len(start) : len(line) - len(end)]


def rerun_remedy(out):
    return (
        f"rerun `neuroplastic run --out {out} --config {out / 'config.json'}`: it recomputes "
        "the file from the run's stages"
    )


def no_weights_remedy(out, stage_dir):
    return (
        "the run no longer keeps the weights to recompute it from (--save-checkpoints keeps "
        f"them); delete {out / stage_dir} to go on without that stage, or rerun into a new --out"
    )


# -- `run` on a finished run -------------------------------------------------------------------
DERIVED = {  # file -> what the run recomputes it from
    "summary.json": "the stages' records",
    "metrics.jsonl": "the stages' records",
    "neurons/random.json": "the base ranking",
    "sentences.json": "the probe sentences",
    "token_embeddings.safetensors": "the model's input embeddings",
}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", DERIVED)
def test_run_recomputes_a_derived_file_and_says_so(finished, tmp_path, cli, name, how):
    out = copy(finished[0], tmp_path)
    damage(out / name, how)
    code, _, stderr = cli(*run_args(out))
    assert code == 0
    one_line(
        stderr,
        f"neuroplastic: warning: {out / name} is corrupt or truncated (",
        f"); recomputing it from {DERIVED[name]}",
    )
    assert (out / name).read_bytes() == (finished[0] / name).read_bytes()
    assert json.loads((out / "summary.json").read_text()) == finished[1]


def test_run_rewrites_metrics_cut_at_a_line_end(finished, tmp_path, cli):
    out = copy(finished[0], tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:3]))  # readable, but rows are missing
    code, _, stderr = cli(*run_args(out))
    assert (code, stderr.strip()) == (
        0,
        f"neuroplastic: warning: {out / 'metrics.jsonl'} does not hold exactly the evaluations "
        "the stages recorded; rewriting it from them",
    )
    assert (out / "metrics.jsonl").read_bytes() == (finished[0] / "metrics.jsonl").read_bytes()


REFUSED_IN_FINISHED_RUN = {  # file -> the end of the one line (after the reason)
    "state/concept/retrain-1.json": lambda out: (
        "; the run no longer keeps the weights to recompute it from (a complete run keeps "
        "none); restore it, or rerun into a new --out"
    ),
    "state/concept/base.json": lambda out: (
        "; it holds the record of the fine-tuned base model every later stage builds on, which "
        "cannot be recomputed without starting over; restore it, or rerun into a new --out"
    ),
    "stages/concept/retrain-1/ranking.parquet": lambda out: (
        "; " + no_weights_remedy(out, "stages/concept/retrain-1")
    ),
    "stages/random/retrain-2/stats.safetensors": lambda out: (
        "; " + no_weights_remedy(out, "stages/random/retrain-2")
    ),
    "stages/concept/base/ranking.parquet": lambda out: (
        "; the run no longer keeps the base weights to recompute it from (--save-checkpoints "
        "keeps them), and the neuron sets come from it; restore it, or rerun into a new --out"
    ),
}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", REFUSED_IN_FINISHED_RUN)
def test_run_refuses_a_file_nothing_kept_can_recompute(finished, tmp_path, cli, name, how):
    out = copy(finished[0], tmp_path)
    damage(out / name, how)
    before = snapshot(out)
    code, _, stderr = cli(*run_args(out))
    assert code == 2
    reason = one_line(
        stderr,
        f"neuroplastic run: error: {out / name} is corrupt or truncated (",
        ")" + REFUSED_IN_FINISHED_RUN[name](out),
    )
    assert reason.split(":")[0] in (
        "JSONDecodeError",
        "UnicodeDecodeError",
        "ArrowInvalid",
        "SafetensorError",
    )
    assert snapshot(out) == before  # refused before anything was written


@pytest.mark.parametrize("how", HOW)
def test_run_refuses_results_under_an_unreadable_config(finished, tmp_path, cli, how):
    out = copy(finished[0], tmp_path)
    damage(out / "config.json", how)
    before = snapshot(out)
    code, _, stderr = cli(*run_args(out))
    assert code == 2
    one_line(
        stderr,
        # every stage and state file, the control arm's predictions and the neuron views'
        # activations (2 arms x their first and last stage) among them
        f"neuroplastic run: error: {out} holds results of a run (state/concept/base.json, "
        f"state/concept/pruned.json and 48 more) but {out / 'config.json'} is corrupt or "
        "truncated (",
        "), so the settings they were computed under cannot be checked; restore it, or use "
        "another --out (nothing was changed)",
    )
    assert snapshot(out) == before


def test_an_unreadable_config_without_results_is_rewritten(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_bytes(b'{"seed": 0, "mod')  # killed before any stage

    def stop(*_):
        raise SimulatedKill

    monkeypatch.setattr(experiment, "_fine_tune_base", stop)
    warnings = []
    with pytest.raises(SimulatedKill):
        experiment.run_experiment(
            tiny_config(), tmp_path, progress=False, log=quiet, warn=warnings.append
        )
    assert warnings == [
        f"{tmp_path / 'config.json'} is corrupt or truncated (JSONDecodeError: Unterminated "
        "string starting at: line 1 column 13 (char 12)); no stage was computed under it: "
        "rewriting it"
    ]
    assert json.loads((tmp_path / "config.json").read_text()) == tiny_config().to_run_file()


def test_deleting_a_stage_nothing_can_recompute_lets_run_and_report_go_on(finished, tmp_path, cli):
    out = copy(finished[0], tmp_path)
    damage(out / "stages/concept/retrain-1/ranking.parquet", "truncated")
    assert cli(*run_args(out))[0] == 2
    shutil.rmtree(out / "stages/concept/retrain-1")  # what the message says to do
    code, _, stderr = cli(*run_args(out))
    assert code == 0  # and says, on every run, what is lost (issue 40)
    lost = ", ".join(
        str(out / "stages/concept/retrain-1" / name)
        for name in sorted(["halves.safetensors", *STAGE_FILES])
    )
    one_line(
        stderr,
        f"neuroplastic: warning: {lost} are missing, though the run's manifest lists them",
        "so its report leaves stage retrain-1 of the concept arm out; restore them, or rerun "
        "into a new --out to have them again",
    )
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 0
    assert "Stage retrain-1 of the concept arm is left out of this report" in stderr


# -- `report` on a finished run ----------------------------------------------------------------
REPORT_REMEDY = {
    "config.json": lambda out: (
        "it holds the settings the run's results were computed under and nothing can "
        "recompute it; restore it, or rerun into a new --out"
    ),
    "stages/concept/retrain-1/ranking.parquet": lambda out: no_weights_remedy(
        out, "stages/concept/retrain-1"
    ),
    "stages/random/pruned/stats.safetensors": lambda out: no_weights_remedy(
        out, "stages/random/pruned"
    ),
    **{name: rerun_remedy for name in DERIVED},
}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", REPORT_REMEDY)
def test_report_refuses_an_unreadable_file_in_one_line(finished, tmp_path, cli, name, how):
    out = copy(finished[0], tmp_path)
    damage(out / name, how)
    code, stdout, stderr = cli("report", out)  # model similarity: reads the embeddings
    assert (code, stdout) == (2, "")
    reason = one_line(
        stderr,
        f"neuroplastic report: error: {out / name} is corrupt or truncated (",
        "); " + REPORT_REMEDY[name](out),
    )
    if name == "metrics.jsonl" and how == "truncated":  # named by the line cut in half
        original = (finished[0] / name).read_bytes()
        cut = original[: len(original) // 2].count(b"\n") + 1
        assert reason.startswith(f"line {cut}: JSONDecodeError: ")
    assert not (out / "report.html").exists()


def test_following_the_report_remedy_recomputes_the_file(finished, tmp_path, cli):
    out = copy(finished[0], tmp_path)
    damage(out / "sentences.json", "garbage")
    assert cli("report", out, "--similarity", "none")[0] == 2
    code, _, stderr = cli("run", "--out", out, "--config", out / "config.json", "--quiet")
    assert code == 0 and "recomputing it from the probe sentences" in stderr
    assert (out / "report.html").is_file()
    assert (out / "sentences.json").read_bytes() == (finished[0] / "sentences.json").read_bytes()


@pytest.mark.parametrize("how", HOW)
def test_report_does_not_read_stage_markers(finished, tmp_path, cli, how):
    out = copy(finished[0], tmp_path)
    damage(out / "state/concept/retrain-1.json", how)  # `run` refuses it (above)
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert (code, stderr) == (0, "")
    assert (out / "report.html").is_file()


# -- `run` on a killed run: recomputed from the weights it kept ----------------------------------
def resume(out):
    warnings = []
    summary = experiment.run_experiment(
        tiny_config(), out, progress=False, log=quiet, warn=warnings.append
    )
    return summary, warnings


def same_stage_files(out, reference):
    files = sorted(p.relative_to(reference) for p in (reference / "stages").rglob("*.*"))
    assert sorted(p.relative_to(out) for p in (out / "stages").rglob("*.*")) == files
    return all((out / f).read_bytes() == (reference / f).read_bytes() for f in files)


@pytest.mark.slow  # kills and resumptions: several runs each
@pytest.mark.parametrize(
    "name, how, source",
    [
        # the stage's own weights: its statistics are taken again, no training
        ("stages/random/pruned/stats.safetensors", "truncated", "stage pruned of the random "
         "arm from state/random/pruned.safetensors"),
        ("stages/concept/base/ranking.parquet", "garbage", "stage base of the concept arm from "
         "state/concept/base.safetensors"),
        # the causal truth, taken again in the kept weights with the removal held
        ("stages/concept/retrain-2/causal.json", "garbage", "stage retrain-2 of the concept arm "
         "from state/concept/retrain-2.safetensors"),
        # no weights after the stage: the arm is computed again from the base weights
        ("stages/concept/retrain-1/top_tokens.parquet", "truncated", "the concept arm from the "
         "base weights (state/concept/base.safetensors): its stages are computed again"),
        # the latest state weights and trainer state of an arm, and a stage marker
        ("state/random/pruned.safetensors", "garbage", "the random arm from the base weights "
         "(state/concept/base.safetensors): its stages are computed again"),
        ("state/concept/retrain-2.trainer.pt", "truncated", "the concept arm from the base "
         "weights (state/concept/base.safetensors): its stages are computed again"),
        ("state/random/pruned.json", "truncated", "the random arm from the base weights "
         "(state/concept/base.safetensors): its stages are computed again"),
    ],
)  # fmt: skip
def test_a_resumption_recomputes_from_the_weights_it_kept(
    killed, finished, tmp_path, name, how, source
):
    out = copy(killed, tmp_path)
    damage(out / name, how)
    summary, warnings = resume(out)
    [warning] = warnings
    assert warning.startswith(f"{out / name} is corrupt or truncated (")
    assert warning.endswith(f"); recomputing {source}")
    # The same run as the one never damaged, to the byte.
    assert summary == finished[1]
    assert same_stage_files(out, finished[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads((finished[0] / "manifest.json").read_text())


def test_report_names_the_rerun_that_recomputes_a_stage(killed, tmp_path, cli):
    out = copy(killed, tmp_path)
    name = "stages/random/pruned/stats.safetensors"
    damage(out / name, "truncated")
    code, _, stderr = cli("report", out, "--similarity", "none")
    assert code == 2
    one_line(
        stderr,
        f"neuroplastic report: error: {out / name} is corrupt or truncated (",
        f"); rerun `neuroplastic run --out {out} --config {out / 'config.json'}`: it recomputes "
        "the stage from the weights the run kept",
    )


@pytest.mark.parametrize("how", HOW)
def test_unreadable_base_weights_are_refused(killed, tmp_path, how):
    out = copy(killed, tmp_path)
    damage(out / "state/concept/base.safetensors", how)
    before = snapshot(out)
    with pytest.raises(NeuroplasticError) as refused:
        resume(out)
    message = str(refused.value)
    assert message.startswith(f"{out / 'state/concept/base.safetensors'} is corrupt or truncated (")
    assert message.endswith(
        "); it holds the fine-tuned base model every later stage builds on, which cannot be "
        "recomputed without starting over; restore it, or rerun into a new --out"
    )
    assert snapshot(out) == before


# -- an --out that cannot hold files ------------------------------------------------------------
@pytest.mark.parametrize("where", ["/proc", "/proc/neuroplastic-run"])
def test_out_under_proc_is_one_line(cli, where):
    code, _, stderr = cli(*run_args(where))
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("neuroplastic run: error: ")
    assert "you can write to" in stderr and "Traceback" not in stderr
