"""summary.json as a type: a real run's file reads into :class:`Summary` and writes back to the
same bytes, every section included; an older summary reads its missing keys as absent; a file
that is no summary is a one-line error that says to rerun."""

from __future__ import annotations

import json
import shutil

import pytest

from neuroplastic.store.manifest import CorruptFile
from neuroplastic.store.rundir import RunDir
from neuroplastic.store.summary import Summary

RUNS = ("tiny_run", "chase_run", "preempt_run")


@pytest.mark.parametrize("fixture", RUNS)
def test_a_real_runs_summary_round_trips_to_the_same_bytes(fixture, request):
    out, returned = request.getfixturevalue(fixture)
    written = (out / "summary.json").read_text()
    summary = Summary.read(RunDir(out))
    # The file as the experiment writes it (atomic_write_json's layout), key order included.
    assert json.dumps(summary.to_dict(), indent=2) + "\n" == written
    assert summary.to_dict() == returned
    assert summary.concept == returned["config"]["concept"]


def test_the_typed_fields_are_the_files_values(chase_run, preempt_run):
    out, returned = chase_run
    summary = Summary.read(RunDir(out))
    concept = summary.arms["concept"]
    assert [s.stage for s in concept.stages] == [
        s["stage"] for s in returned["arms"]["concept"]["stages"]
    ]
    last = returned["arms"]["concept"]["stages"][-1]
    assert concept.stages[-1].f1 == last["f1"] and concept.stages[-1].step == last["step"]
    assert concept.stages[-1].gap_to_control == last["gap_to_control"]
    assert summary.base_scores() == returned["arms"]["concept"]["stages"][0]["f1"]
    assert summary.retraining_steps == returned["steps"]["per_stage"] * returned["config"]["stages"]
    assert summary.arms["random"].control == returned["arms"]["random"]["control"]
    assert summary.chase == returned["chase"] and summary.preempt is None
    preempted = Summary.read(RunDir(preempt_run[0]))
    assert preempted.preempt == preempt_run[1]["preempt"] and preempted.chase is None


def test_an_older_summary_reads_what_it_lacks_as_absent(tiny_run):
    _, returned = tiny_run
    older = {k: v for k, v in returned.items() if k not in ("steps", "base", "data")}
    older["arms"] = {
        arm: {k: v for k, v in data.items() if k not in ("control", "recovery")}
        for arm, data in returned["arms"].items()
    }
    summary = Summary.from_dict(older)
    assert (summary.steps, summary.base, summary.data) == (None, None, None)
    assert summary.arms["random"].control is None and summary.arms["concept"].recovery is None
    assert summary.to_dict() == older
    with pytest.raises(KeyError, match="no step counts"):
        summary.retraining_steps  # noqa: B018


def test_a_file_that_is_no_summary_says_to_rerun(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    (out / "summary.json").write_text(json.dumps({"config": {}, "arms": {"concept": {}}}))
    with pytest.raises(CorruptFile) as error:
        Summary.read(RunDir(out))
    message = str(error.value)
    assert "summary.json" in message and "rerun" in message and "\n" not in message
