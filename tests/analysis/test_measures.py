"""The run's own recovery measures: a dense grid where recovery happens, stored with them;
censored runs counted; the control named for what it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import tiny_config

from neuroplastic.config import ExperimentConfig, dense_grid
from neuroplastic.core.curves import MIN_DROP, recovery, share_recovered
from neuroplastic.core.neurons import NeuronSet, control_kind
from neuroplastic.experiment.pipeline import run_experiment
from neuroplastic.store.rundir import RunDir


def quiet(*_: object) -> None:
    pass


def test_the_dense_grid_is_every_step_then_log_spaced() -> None:
    assert dense_grid(30) == [1, 2, 3, 4, 6, 8, 11, 15, 21, 30]
    assert dense_grid(3) == [1, 2, 3]
    config = ExperimentConfig()
    assert config.eval_grid == "dense"
    # Inside the stage only (its end is always evaluated), and only in a round's first stage.
    assert config.inner_evaluations(30, first_of_round=True) == [1, 2, 3, 4, 6, 8, 11, 15, 21]
    assert config.inner_evaluations(30, first_of_round=False) == []
    both = ExperimentConfig(eval_every=10)
    assert both.inner_evaluations(30, first_of_round=False) == [10, 20]
    assert ExperimentConfig(eval_grid="uniform").inner_evaluations(30, True) == []


def test_recovery_measures_by_hand_and_the_censored_case() -> None:
    curve = {"step": [0.0, 1, 2, 4, 8, 30], "f1": [0.1, 0.3, 0.5, 0.7, 0.85, 0.9]}
    base = 0.95
    measures = recovery(curve, base)
    # 90% of 0.95 = 0.855 lies between steps 8 (0.85) and 30 (0.9): 8 + 0.005 / 0.05 * 22.
    assert measures["steps_to_recover"] == pytest.approx(8 + 0.1 * 22)
    assert measures["reached"] is True and measures["budget"] == 30
    assert measures["grid"] == curve["step"]
    # Share of the drop recovered at 5: interpolated 0.7 + (0.85 - 0.7) / 4 between 4 and 8.
    at_5 = 0.7 + 0.15 / 4
    assert measures["share_recovered"]["5"] == pytest.approx((at_5 - 0.1) / (0.95 - 0.1))
    assert measures["share_recovered"]["30"] == pytest.approx((0.9 - 0.1) / 0.85)
    censored = recovery({"step": [0.0, 10, 20], "f1": [0.1, 0.4, 0.6]}, base)
    assert censored["reached"] is False and censored["steps_to_recover"] is None
    assert censored["budget"] == 20
    assert censored["share_recovered"]["30"] is None  # beyond the grid: not extrapolated
    # A control that barely fell has no drop to take a share of.
    flat = {"step": [0.0, 10], "f1": [base * (1 - MIN_DROP / 2), base]}
    assert np.isnan(share_recovered(flat, base, 5))


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    return out, run_experiment(tiny_config(eval_grid="dense"), out, progress=False, log=quiet)


def test_a_default_grid_run_evaluates_the_first_stage_densely(dense_run) -> None:
    out, summary = dense_run
    metrics = RunDir(out).metrics()
    for arm in ("concept", "random"):
        names = metrics[metrics["arm"] == arm]["stage"].tolist()
        # stage_steps 3: steps 1 and 2 inside retrain-1, none inside retrain-2.
        assert names == ["base", "pruned", "retrain-1@1", "retrain-1@2", "retrain-1", "retrain-2"]
        recovered = summary["arms"][arm]["recovery"]
        assert recovered["grid"] == [0.0, 1.0, 2.0, 3.0, 6.0]
        rows = metrics[(metrics["arm"] == arm) & (metrics["stage"] != "base")]
        concept = summary["config"]["concept"]
        base = summary["arms"][arm]["stages"][0]["f1"][concept]
        expected = recovery({"step": rows["step"].tolist(), "f1": rows[f"f1_{concept}"]}, base)
        assert recovered == json.loads(json.dumps(expected))
    # The stage table of the summary keeps stage ends only.
    stages = [e["stage"] for e in summary["arms"]["concept"]["stages"]]
    assert stages == ["base", "pruned", "retrain-1", "retrain-2"]


def test_a_control_from_a_pool_no_larger_than_the_set_is_the_complement() -> None:
    half = NeuronSet.of(2, 4, [(0, 0), (0, 1), (1, 0), (1, 1)])
    draws = [half.random_global(seed) for seed in (0, 1)]
    assert draws[0].neurons == draws[1].neurons == half.complement().neurons
    assert control_kind("random-global", draws[0], half) == "complement"
    assert control_kind("random", half.random_matching(0), half) == "complement"
    small = NeuronSet.of(2, 8, [(0, 0), (1, 1)])
    assert control_kind("random-global", small.random_global(0), small) == "random"
    anywhere = [small.random_any(seed) for seed in range(4)]
    assert len({a.neurons for a in anywhere}) > 1  # a draw that differs between seeds
    assert control_kind("random-any", anywhere[0], small) == "random-any"


def test_a_half_removal_names_its_control_the_complement(tmp_path) -> None:
    config = tiny_config(fraction=0.5, baseline="random-global", stages=1)
    sets, lines = [], []
    for seed in (0, 1):
        out = tmp_path / f"seed-{seed}"
        summary = run_experiment(
            tiny_config(**{**config.to_dict(), "seed": seed}), out, progress=False,
            log=lines.append,
        )  # fmt: skip
        assert summary["arms"]["random"]["control"] == "complement"
        # The two halves share no survivor: each arm's predictions are scored on its own.
        assert {row["population"] for row in summary["prediction"]} == {"own arm"}
        sets.append(RunDir(out).neurons("random").neurons)
        # At 50% the "random" control is the other half, whatever the seed (the seed changes
        # the head, so the concept's own set, and with it the other half) ...
        assert sets[-1] == RunDir(out).neurons("concept").complement().neurons
    assert any("complement" in line for line in lines)
    concept = RunDir(tmp_path / "seed-0").neurons("concept")
    # ... and random-any draws from every neuron, recording its overlap with the concept's.
    out = tmp_path / "any"
    summary = run_experiment(
        tiny_config(**{**config.to_dict(), "baseline": "random-any"}), out, progress=False,
        log=quiet,
    )  # fmt: skip
    drawn = RunDir(out).neurons("random")
    assert summary["arms"]["random"]["control"] == "random-any"
    assert summary["arms"]["random"]["overlap_with_concept"] == drawn.overlap(concept) > 0
    assert drawn.neurons != sets[0]
