"""Data-parallel runs: 2 CPU processes (gloo) launched by torchrun, against one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from neuroplastic.core.stats import NeuronStats, collect_stats
from neuroplastic.data.load import encode_split
from neuroplastic.experiment.pipeline import run_experiment
from neuroplastic.store.rundir import RunDir, stage_names

# Minutes of model runs and subprocesses: outside the quick loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parents[1] / "support" / "distributed_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, n: int = 2, timeout: int = 300, ok: bool = True):
    """``torchrun --nproc_per_node n ARGS`` (a script and its arguments, or ``-m module ...``)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_give_the_statistics_of_one(tmp_path, tiny_bert, corpus):
    torchrun(str(WORKER), "stats", str(tmp_path / "stats.safetensors"))
    merged = NeuronStats.load(tmp_path / "stats.safetensors")
    dataset = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=60)
    single = collect_stats(tiny_bert, dataset, batch_size=8, top_k=5, progress=False)
    assert torch.equal(merged.count, single.count)
    # The same batches on either side; only the order of the additions differs.
    torch.testing.assert_close(merged.sum, single.sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.sum_sq, single.sum_sq, rtol=1e-12, atol=1e-12)
    assert torch.equal(merged.top_values, single.top_values)
    # Sentence indices stay global: each stored entry is the one a single pass stored, except
    # that of several tokens with exactly equal activations (repeated words in one template)
    # either may be kept.
    assert entries(merged) == entries(single)
    assert len(entries(single)) > single.top_values.numel() // 2


def entries(stats: NeuronStats) -> set[tuple]:
    rows = set()
    for layer in range(stats.n_layers):
        for neuron in range(stats.d_mlp):
            values = stats.top_values[layer, neuron].tolist()
            for j, value in enumerate(values):
                if values.count(value) == 1:
                    where = [
                        int(getattr(stats, name)[layer, neuron, j])
                        for name in ("top_sentence", "top_position", "top_token", "top_label")
                    ]
                    rows.add((layer, neuron, value, *where))
    return rows


SETTINGS = tiny_config(eval_every=2)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The tiny experiment run by 2 processes through the CLI, with every rank's measure of
    its held neurons; and the same settings run by one process. Evaluations inside the stages
    too (``eval_every``), which every rank takes in step."""
    root = tmp_path_factory.mktemp("launched")
    config, checks = root / "config.json", root / "checks"
    config.write_text(json.dumps(SETTINGS.to_dict()))
    checks.mkdir()
    torchrun(str(WORKER), "run", str(root / "run"), str(config), str(checks))
    single = run_experiment(SETTINGS, root / "single", progress=False, log=quiet)
    ranks = [json.loads((checks / f"rank-{r}.json").read_text()) for r in range(2)]
    return root, single, ranks


def test_two_processes_run_the_experiment_of_one(launched):
    root, single, _ = launched
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert summary["config"] == single["config"] == SETTINGS.to_dict()
    assert summary["processes"] == [2] and "processes" not in single
    assert summary["steps"] == single["steps"] and summary["data"] == single["data"]
    assert set(summary["arms"]) == set(single["arms"]) == {"concept", "random"}
    for arm, result in summary["arms"].items():
        expected = single["arms"][arm]
        assert [s["stage"] for s in result["stages"]] == stage_names(2)
        assert [s["step"] for s in result["stages"]] == [s["step"] for s in expected["stages"]]
        assert result["neurons"] == expected["neurons"]
        for stage in result["stages"]:
            assert set(stage["f1"]) == {"overall", "LOC", "PER", "ORG", "MISC"}
            assert all(0.0 <= value <= 1.0 for value in stage["f1"].values())
    run, one = RunDir(root / "run"), RunDir(root / "single")
    assert run.stages("random") == stage_names(2)
    assert run.metrics()[["arm", "stage", "step"]].equals(one.metrics()[["arm", "stage", "step"]])
    assert run.metrics()["stage"].str.contains("@").sum() == 4  # retrain-1@2, retrain-2@2
    assert not list((root / "run").rglob("*.tmp"))


def test_held_neurons_are_zero_on_every_replica(launched):
    root, _, ranks = launched
    concept = RunDir(root / "run").neurons("concept")
    stages = [(arm, stage) for arm in ("concept", "random") for stage in stage_names(2)[1:]]
    for r, report in enumerate(ranks):
        assert (report["rank"], report["world"]) == (r, 2)
        assert [(c["arm"], c["stage"]) for c in report["checks"]] == stages
        for check in report["checks"]:
            assert check["max_abs"] == 0.0 and check["held"] == len(concept)
            assert check["tokens"] > 100 and check["layers"]
    # DDP keeps the replicas identical: the same weights on both ranks after every stage, and
    # training changed them from one stage to the next.
    digests = [[c["weights"] for c in report["checks"]] for report in ranks]
    assert digests[0] == digests[1]
    assert len(set(digests[0])) == len(stages) - 1  # the two arms' "pruned" share base weights


def test_a_killed_launched_run_resumes_to_the_same_summary(launched, tmp_path):
    root, _, _ = launched
    config, out = root / "config.json", tmp_path / "run"
    stopped = torchrun(
        str(WORKER), "run", str(out), str(config), str(tmp_path), "concept:retrain-1", ok=False
    )
    assert stopped.returncode != 0
    run = RunDir(out)
    assert run.marker_path("concept", "retrain-1").is_file()
    assert not run.marker_path("concept", "retrain-2").is_file()
    # The module entry point, as a user launches it.
    flags = ["run", "--out", str(out), "--config", str(config), "--no-report", "--quiet"]
    result = torchrun("-m", "neuroplastic.cli", *flags)
    assert result.stdout.count("summary:") == 1  # rank 0 alone prints
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed == json.loads((root / "run" / "summary.json").read_text())


def test_a_chase_runs_data_parallel_with_every_rounds_neurons_held(tmp_path):
    """A 2-round chase by 2 processes: the round-2 sets are chosen once (on rank 0) and held on
    both replicas, exactly zero at every stage of both rounds, with the replicas in step."""
    config, checks = tmp_path / "config.json", tmp_path / "checks"
    config.write_text(json.dumps(tiny_config(rounds=2).to_dict()))
    checks.mkdir()
    torchrun(str(WORKER), "run", str(tmp_path / "run"), str(config), str(checks))
    run = RunDir(tmp_path / "run")
    summary = run.summary()
    assert summary["chase"]["rounds_run"] == 2 and summary["processes"] == [2]
    expected = {
        (arm, stage): len(run.neurons(arm, 1 if stage in stage_names(2) else 2))
        for arm in ("concept", "random")
        for stage in stage_names(2, rounds=2)[1:]
    }
    # then the one-shot arm: every chased neuron, held from base for one round
    expected |= {
        ("one-shot", stage): len(run.neurons("concept", 2)) for stage in stage_names(2)[1:]
    }
    assert len(run.neurons("concept", 2)) > len(run.neurons("concept", 1))
    ranks = [json.loads((checks / f"rank-{r}.json").read_text()) for r in range(2)]
    for report in ranks:
        assert {(c["arm"], c["stage"]): c["held"] for c in report["checks"]} == expected
        assert all(c["max_abs"] == 0.0 for c in report["checks"])
    assert [c["weights"] for c in ranks[0]["checks"]] == [c["weights"] for c in ranks[1]["checks"]]


def test_an_erasure_is_held_on_every_replica(tmp_path):
    """``--removal leace`` by 2 processes: the eraser is fitted once (rank 0) and every replica
    holds the same one at every stage after base, so that erasing again changes nothing, with
    the replicas in step; the control holds its random projection the same way."""
    pytest.importorskip("concept_erasure")
    config, checks = tmp_path / "config.json", tmp_path / "checks"
    config.write_text(json.dumps(tiny_config(removal="leace").to_dict()))
    checks.mkdir()
    torchrun(str(WORKER), "run", str(tmp_path / "run"), str(config), str(checks))
    run = RunDir(tmp_path / "run")
    assert run.summary()["processes"] == [2]
    ranks = [json.loads((checks / f"rank-{r}.json").read_text()) for r in range(2)]
    stages = [(arm, stage) for arm in ("concept", "random") for stage in stage_names(2)[1:]]
    for report in ranks:
        assert [(c["arm"], c["stage"]) for c in report["checks"]] == stages
        for check in report["checks"]:
            assert check["active"]
            assert check["erased_again"] <= 1e-4 * check["scale"], check
        assert {c["kind"] for c in report["checks"] if c["arm"] == "random"} == {"random"}
    for key in ("erasure", "weights"):
        assert [c[key] for c in ranks[0]["checks"]] == [c[key] for c in ranks[1]["checks"]]


def test_on_main_within_on_main_hands_over_only_the_outer_result(monkeypatch):
    """Rank 0 inside an ``on_main`` call runs a nested one directly: the other ranks wait for
    one broadcast per outer call, so a nested broadcast would hand them the wrong value."""
    from neuroplastic import distributed

    sent = []
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "is_main", lambda: True)
    monkeypatch.setattr(distributed, "broadcast_object", lambda value: sent.append(value) or value)

    @distributed.rank_zero
    def inner(x):
        return x + 1

    assert distributed.on_main(lambda: inner(1) * 10) == 20
    assert sent == [("ok", 20)]
    assert distributed.OnMain([3, 1, 2]).index(2) == 2 and sent[-1] == ("ok", 2)
    with pytest.raises(TypeError):  # an error in the nested call: one error broadcast
        distributed.on_main(lambda: inner("a"))
    assert sent[-1][0] == "error" and len(sent) == 3
    assert distributed.on_main(lambda: inner(5)) == 6 and sent[-1] == ("ok", 6)  # reset after
