"""The report's figure builders, on hand-made data: what each draws, checked trace by trace."""

import pandas as pd
import pytest

pytest.importorskip("plotly")

from neuroplastic.report import figures, sweep_figures  # noqa: E402


def _curves(rows):
    return pd.DataFrame(rows, columns=["arm", "stage", "step", "entity", "value"])


def test_stage_starts_are_the_previous_stages_last_step_and_merge_when_no_step_passes():
    curves = _curves(
        [
            ("concept", "base", 0, "LOC", 0.9),
            ("concept", "pruned", 0, "LOC", 0.1),
            ("concept", "retrain-1@2", 2, "LOC", 0.5),
            ("concept", "retrain-1", 4, "LOC", 0.7),
            ("concept", "retrain-2", 8, "LOC", 0.8),
            ("random", "retrain-2", 9, "LOC", 0.8),  # only the first arm's steps count
        ]
    )
    assert figures.stage_starts(curves) == [("pruned, retrain-1", 0.0), ("retrain-2", 4.0)]


def test_the_concept_arm_is_drawn_last_and_solid_its_controls_dashed():
    curves = _curves([("concept", "base", 0, "LOC", 1.0), ("random", "base", 0, "LOC", 1.0)])
    assert [arm for arm, _ in figures.concept_on_top(curves)] == ["random", "concept"]
    assert "dash" not in figures.arm_line("concept")
    assert figures.arm_line("random")["dash"] == "dash"
    fig = figures.headline(curves, main="LOC", score="F1", metric="f1")
    assert [t.name for t in fig.data] == ["random arm", "concept arm"]
    assert "against its control" in fig.layout.title.text


def test_the_chase_figure_draws_the_arms_asked_its_round_starts_and_the_target():
    metrics = pd.DataFrame(
        {
            "arm": ["concept", "concept", "random", "preempt"],
            "stage": ["retrain-1", "r2/retrain-1", "retrain-1", "retrain-1"],
            "step": [3, 6, 3, 3],
            "f1_LOC": [0.5, 0.6, 0.8, 0.7],
        }
    )
    fig = figures.chase_recovery(
        metrics,
        column="f1_LOC",
        arms=["concept", "random"],
        round_starts=[(1, 0.0), (2, 6.0)],
        base_score=0.8,
        concept="LOC",
    )
    assert [t.name for t in fig.data] == ["concept arm", "random arm"]
    lines = [(s.type, s.x0, s.y0) for s in fig.layout.shapes]
    assert ("line", 0.0, 0) in lines and ("line", 6.0, 0) in lines
    assert any(s.y0 == pytest.approx(0.72) for s in fig.layout.shapes)  # 90% of 0.8


def test_error_bars_run_from_the_mean_to_the_intervals_ends_and_none_without_one():
    bars = sweep_figures.error_bars(
        [
            {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.7},
            {"mean": 0.2, "ci_low": None, "ci_high": None},
        ]
    )
    assert bars["array"] == pytest.approx([0.2, 0])
    assert bars["arrayminus"] == pytest.approx([0.1, 0])


def test_a_share_line_without_points_draws_nothing_but_keeps_its_dash():
    point = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    fig = sweep_figures.share_recovered({"5": ([], []), "10": (["a"], [point])}, "relearn_lr")
    assert [(t.name, t.line.dash) for t in fig.data] == [("after 10 steps", "dash")]
