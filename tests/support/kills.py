"""Kill a run at a chosen point, as SIGKILL would, for the resumption tests."""

from __future__ import annotations

from pathlib import Path

import neuroplastic.experiment.pipeline as experiment
import neuroplastic.store.checkpoint as checkpoint


class SimulatedKill(BaseException):
    """Like SIGKILL for the code under test: nothing after it runs (not an Exception)."""


def kill_at(monkeypatch, out: Path, arm: str, stage: str, when: str):
    """An ``on_stage`` callback (:class:`neuroplastic.experiment.pipeline.StageEvent`) that
    stops the run it is given to at ``stage`` of ``arm``: ``before`` the stage is finished
    (after its training, before anything is written) or ``mid-training`` (after the first of
    its steps). ``after-weights`` (its weights and trainer state written, its marker not: a
    torn stage) is a point inside the store's writes, so it patches the store's JSON write;
    ``monkeypatch.undo()`` lets the rerun go through."""
    moment = {"before": "trained", "mid-training": "step", "after-weights": None}[when]
    if when == "after-weights":
        real_write = checkpoint.atomic_write_json
        marker = out / "state" / arm / f"{stage}.json"

        def write_then_die(path, value):
            if path == marker:
                raise SimulatedKill
            return real_write(path, value)

        monkeypatch.setattr(checkpoint, "atomic_write_json", write_then_die)

    def on_stage(event: experiment.StageEvent) -> None:
        if (event.arm, event.stage, event.moment) == (arm, stage, moment):
            raise SimulatedKill

    return on_stage


def killed_then_resumed(monkeypatch, out: Path, config, arm: str, stage: str, when: str) -> dict:
    """Run ``config`` into ``out``, killed at (``arm``, ``stage``, ``when``) as :func:`kill_at`
    says, then run it again to the end; returns the resumed run's summary."""
    import pytest

    kill = kill_at(monkeypatch, out, arm, stage, when)
    with pytest.raises(SimulatedKill):
        experiment.run_experiment(config, out, progress=False, log=lambda *_: None, on_stage=kill)
    monkeypatch.undo()
    return experiment.run_experiment(config, out, progress=False, log=lambda *_: None)
