"""``neuroplastic sweep --executor ray``: every run a Ray task, with the serial sweep's results.

A local Ray instance of 2 CPUs runs a 2-seed sweep of tiny-bert; its sweep.json must equal the
serial sweep's in every measure (both with one torch thread per run, so that the arithmetic is
the same). Then a worker is killed in the middle of a run: Ray runs the task again, the run
resumes from its directory, and the result still equals.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from tiny import TINY, without_provenance

import neuroplastic.experiment.sweep as sweep
from neuroplastic.config import ExperimentConfig
from neuroplastic.store.rundir import RunDir

pytestmark = pytest.mark.slow

if os.environ.get("CI"):  # under CI the [cluster] extra is installed: a missing Ray fails
    import ray
else:
    ray = pytest.importorskip("ray", reason='pip install "neuroplastic[cluster]" for Ray tests')

from neuroplastic.errors import NeuroplasticError  # noqa: E402
from neuroplastic.experiment.ray_executor import RayExecutor  # noqa: E402

CONFIG = dict(TINY, base_steps=12, plateau_every=0, stage_steps=3, learning_rate=1e-2)
SEEDS = [0, 1]
MODES = ["hold", "regrow"]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task of one CPU does
    try:
        out = tmp_path_factory.mktemp("serial")
        return sweep.run_sweep(
            ExperimentConfig(**CONFIG), out, seeds=SEEDS, modes=MODES, progress=False, log=quiet
        )
    finally:
        torch.set_num_threads(threads)


def test_a_ray_sweep_equals_the_serial_sweep(local_ray, serial, tmp_path) -> None:
    lines: list[str] = []
    out = tmp_path / "ray"
    result = sweep.run_sweep(
        ExperimentConfig(**CONFIG), out, seeds=SEEDS, modes=MODES, progress=False,
        log=lines.append, executor=RayExecutor(log=lines.append),
    )  # fmt: skip
    assert json.loads(json.dumps(result)) == json.loads(json.dumps(serial))
    # Two waves: one run per seed trains the base (hold, listed first), then the regrow runs.
    assert sum("done on Ray (1 of 2" in line for line in lines) == 2
    for seed in SEEDS:
        marker = RunDir(out / "regrow-selectivity" / f"seed-{seed}").marker_path("concept", "base")
        shared = json.loads(marker.read_text())["base"]["shared_from"]
        assert shared == str(out / "hold-selectivity" / f"seed-{seed}")
    assert not list(out.rglob("base.safetensors"))  # no base weights left behind
    # Resuming a finished sweep submits nothing and gives the same result.
    lines.clear()
    again = sweep.run_sweep(
        ExperimentConfig(**CONFIG), out, seeds=SEEDS, modes=MODES, progress=False,
        log=lines.append, executor=RayExecutor(log=lines.append),
    )  # fmt: skip
    assert again == result and not [line for line in lines if "on Ray" in line]


def test_a_worker_killed_mid_run_is_retried_and_the_result_still_equals(
    local_ray, serial, tmp_path
) -> None:
    out = tmp_path / "ray"
    victim = RunDir(out / "hold-selectivity" / "seed-1")
    killed: list[int] = []

    def kill_when_pruned() -> None:
        # The run's lock file names the worker holding it; kill that worker once the run has
        # finished its pruned stage (the middle of the run).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if victim.marker_path("concept", "pruned").is_file():
                pid = int(victim.lock_path.read_text().strip() or 0)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_when_pruned, daemon=True)
    watcher.start()
    result = sweep.run_sweep(
        ExperimentConfig(**CONFIG), out, seeds=SEEDS, modes=MODES, progress=False, log=quiet,
        executor=RayExecutor(log=quiet),
    )  # fmt: skip
    watcher.join(timeout=5)
    assert killed, "the run finished before its worker could be killed"
    assert json.loads(json.dumps(without_provenance(result))) == json.loads(
        json.dumps(without_provenance(serial))
    )


# -- --quiet: nothing but the one-line error (issue 40) ------------------------------------------
def test_an_unreachable_cluster_is_one_line_and_ray_s_own_lines_are_held(monkeypatch, capfd):
    """Ray's core writes to file descriptor 2 itself while it retries (about 20 lines for an
    address nothing answers at): none of it reaches the terminal before the one line."""

    def unreachable(**_):
        for _ in range(20):
            os.write(2, b"[2026 W 1 1] rpc_client.h:153: Failed to connect to GCS\n")
        raise ConnectionError("Could not find any running Ray instance.\nPlease start one.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", unreachable)
    with pytest.raises(NeuroplasticError) as refused:
        RayExecutor("10.0.0.1:1", quiet=True)
    assert str(refused.value) == (
        "cannot reach a Ray cluster at '10.0.0.1:1' (Could not find any running Ray "
        "instance.); start one with `ray start --head`, or leave out --ray-address for a "
        "local instance"
    )
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("quiet_run", [True, False])
def test_a_quiet_sweep_s_ray_tasks_print_no_stage_lines(monkeypatch, capfd, tmp_path, quiet_run):
    import neuroplastic.experiment.pipeline as pipeline
    from neuroplastic.experiment.ray_executor import _run_one

    monkeypatch.setattr(pipeline, "run_experiment", lambda *a, log, **k: log("[concept] base"))
    path = tmp_path / "cell" / "seed-0"
    _run_one(ExperimentConfig(**CONFIG).to_dict(), str(path), [], False, 1.0, quiet_run)
    expected = "" if quiet_run else "[cell/seed-0] [concept] base\n"
    assert capfd.readouterr().out == expected
