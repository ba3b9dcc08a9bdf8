"""Kill a run at a chosen point, as SIGKILL would, for the resumption tests."""

from __future__ import annotations

from pathlib import Path

import neuroplastic.experiment.pipeline as experiment
import neuroplastic.store.checkpoint as checkpoint
from neuroplastic.core.training import Trainer


class SimulatedKill(BaseException):
    """Like SIGKILL for the code under test: nothing after it runs (not an Exception)."""


def kill_at(monkeypatch, out: Path, arm: str, stage: str, when: str) -> None:
    """Make the next run into ``out`` stop at ``stage`` of ``arm``: ``before`` the stage is
    finished (after its training, before anything is written), ``after-weights`` (its weights
    and trainer state written, its marker not: a torn stage) or ``mid-training`` (after one of
    its steps). ``monkeypatch.undo()`` lets the rerun go through."""
    real_finish, real_write, real_run = (
        experiment._finish_stage,
        checkpoint.atomic_write_json,
        Trainer.run,
    )
    marker = out / "state" / arm / f"{stage}.json"

    def finish(setup, arm_, stage_, *args, **kwargs):
        if (arm_, stage_, when) == (arm, stage, "before"):
            raise SimulatedKill
        return real_finish(setup, arm_, stage_, *args, **kwargs)

    def write_then_die(path, value):
        if when == "after-weights" and path == marker:
            raise SimulatedKill
        return real_write(path, value)

    def run_then_die(self, n_steps, on_step=None, progress=True, description=""):
        current = ("concept", "base") if "base" in description else (None, None)
        if description.startswith("["):
            current = tuple(description[1:].split("] "))
        if when == "mid-training" and current == (arm, stage):
            real_run(self, 1, None, False, description)
            raise SimulatedKill
        return real_run(self, n_steps, on_step, progress, description)

    monkeypatch.setattr(experiment, "_finish_stage", finish)
    monkeypatch.setattr(checkpoint, "atomic_write_json", write_then_die)
    monkeypatch.setattr(Trainer, "run", run_then_die)


def killed_then_resumed(monkeypatch, out: Path, config, arm: str, stage: str, when: str) -> dict:
    """Run ``config`` into ``out``, killed at (``arm``, ``stage``, ``when``) as :func:`kill_at`
    says, then run it again to the end; returns the resumed run's summary."""
    import pytest

    kill_at(monkeypatch, out, arm, stage, when)
    with pytest.raises(SimulatedKill):
        experiment.run_experiment(config, out, progress=False, log=lambda *_: None)
    monkeypatch.undo()
    return experiment.run_experiment(config, out, progress=False, log=lambda *_: None)
