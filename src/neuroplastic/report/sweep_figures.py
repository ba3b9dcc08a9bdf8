"""The sweep report's Plotly figures, apart from its prose: each draws numbers it is handed
(per-seed curves, measures across seeds as ``interval``'s dicts) and returns a
``plotly.graph_objects.Figure``; :mod:`neuroplastic.report.sweep_report` picks the numbers
from sweep.json and writes the sentences around them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuroplastic.config import CONCEPT_ARM
from neuroplastic.extras import require
from neuroplastic.report.style import ARM_COLORS

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

#: An arm without a colour of its own
OTHER_COLOR = "#555"
#: Measures across seeds at points of an axis: (x values, one ``interval`` dict per x)
Points = tuple[Sequence[Any], Sequence[Mapping[str, Any]]]


def _go() -> Any:
    return require("plotly.graph_objects", "the sweep report's plots")


def error_bars(values: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Plotly's asymmetric error bars of measures across seeds (``interval``'s dicts): from
    each mean to its interval's ends, none where a measure has no interval."""
    high = [0 if v["ci_high"] is None else v["ci_high"] - v["mean"] for v in values]
    low = [0 if v["ci_low"] is None else v["mean"] - v["ci_low"] for v in values]
    return {"type": "data", "symmetric": False, "array": high, "arrayminus": low}


def seed_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], concept: str, score: str = "f1"
) -> Figure:
    """Every seed's concept score against retraining step, per arm, thin; the mean of the
    seeds, thick, where all seeds were evaluated at the same steps. ``score``: ``f1``, or a
    language model's ``lm_loss`` (the concept's next-token loss)."""
    go = _go()
    figure = go.Figure()
    for arm, per_seed in curves.items():
        color = ARM_COLORS.get(arm, OTHER_COLOR)
        frames = [pd.DataFrame(c).rename(columns={score: "f1"}) for c in per_seed]
        for i, curve in enumerate(frames):
            figure.add_trace(
                go.Scatter(
                    x=curve["step"], y=curve["f1"], mode="lines", name=f"{arm}, one seed",
                    line={"color": color, "width": 1}, opacity=0.35,
                    legendgroup=arm, showlegend=i == 0,
                )
            )  # fmt: skip
        steps = frames[0]["step"]
        if all(len(c) == len(steps) and (c["step"].values == steps.values).all() for c in frames):
            mean = np.mean([c["f1"].to_numpy() for c in frames], axis=0)
            figure.add_trace(
                go.Scatter(
                    x=steps, y=mean, mode="lines+markers", name=f"{arm}, mean of seeds",
                    line={"color": color, "width": 3}, legendgroup=arm,
                )
            )  # fmt: skip
    figure.update_layout(
        xaxis_title="retraining step (0 = pruned)",
        yaxis_title=f"{concept} F1" if score == "f1" else f"next-token loss on {concept} (nats)",
        margin={"t": 30},
    )
    return figure


def predictor_auc(frame: pd.DataFrame) -> Figure:
    """Each predictor's ROC AUC (mean and interval across seeds), a bar per (arm, truth)."""
    go = _go()
    auc = frame[frame["measure"] == "auc"]
    figure = go.Figure()
    for (arm, truth), group in auc.groupby(["arm", "truth"], sort=False):
        mean = group["mean"].astype(float)
        high = (group["ci_high"].astype(float) - mean).fillna(0)
        low = (mean - group["ci_low"].astype(float)).fillna(0)
        figure.add_trace(
            go.Bar(
                x=group["predictor"], y=mean, name=f"{arm} arm, truth: {truth}",
                error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
            )
        )  # fmt: skip
    figure.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
    figure.update_layout(
        barmode="group", yaxis_title="ROC AUC (mean, 95% interval)", yaxis_range=[0, 1],
        margin={"t": 30},
    )  # fmt: skip
    return figure


def chase_rounds(per_round: Sequence[Mapping[str, Any]], concept: str) -> Figure:
    """The concept's F1 after each round's removal (dotted) and retraining (solid), per arm,
    mean and interval across seeds."""
    go = _go()
    figure = go.Figure()
    arms = list(dict.fromkeys(a for entry in per_round for a in entry["arms"]))
    rounds = [entry["round"] for entry in per_round]
    for measure, when, dash in (
        ("removed", "after removal", "dot"),
        ("retrained", "retrained", None),
    ):
        for arm in arms:
            values = [entry["arms"][arm][measure] for entry in per_round]
            mean = np.array([np.nan if v["mean"] is None else v["mean"] for v in values])
            figure.add_trace(
                go.Scatter(
                    x=rounds, y=mean, mode="lines+markers", name=f"{arm} arm, {when}",
                    line={"color": ARM_COLORS.get(arm), "dash": dash}, error_y=error_bars(values),
                )
            )  # fmt: skip
    figure.update_layout(
        xaxis={"title": "round", "dtick": 1},
        yaxis_title=f"{concept} F1 (mean, 95% interval across seeds)",
        margin={"t": 30},
    )
    return figure


def savings_seeds(curves: Mapping[str, Sequence[Mapping[str, Any]]], concept: str) -> Figure:
    """Every seed's concept F1 against retraining step, per arm (concept, random, naive)."""
    go = _go()
    figure = go.Figure()
    for arm, per_seed in curves.items():
        for i, curve in enumerate(per_seed):
            figure.add_trace(
                go.Scatter(
                    x=curve["step"], y=curve["f1"], mode="lines", name=f"{arm} arm",
                    line={"color": ARM_COLORS.get(arm, OTHER_COLOR), "width": 1.5}, opacity=0.6,
                    legendgroup=arm, showlegend=i == 0,
                )
            )  # fmt: skip
    figure.update_layout(
        xaxis_title="retraining step (0 = the removal)",
        yaxis_title=f"{concept} F1",
        margin={"t": 30},
    )
    return figure


def grid_axis(arms: Mapping[str, Points], axis: str, concept: str) -> Figure:
    """The concept's F1 after the first retraining stage against one grid axis, per arm: a
    marker and interval per cell."""
    go = _go()
    figure = go.Figure()
    for arm, (xs, points) in arms.items():
        figure.add_trace(
            go.Scatter(
                x=[str(x) for x in xs], y=[p["mean"] for p in points], mode="markers",
                name=f"{arm} arm", marker={"color": ARM_COLORS.get(arm, OTHER_COLOR), "size": 9},
                error_y=error_bars(points),
            )
        )  # fmt: skip
    figure.update_layout(
        xaxis_title=axis,
        yaxis_title=f"{concept} F1 after the first retraining stage",
        yaxis_range=[0, 1.02],
        margin={"t": 30},
    )
    return figure


def share_recovered(lines: Mapping[str, Points], axis: str) -> Figure:
    """The concept arm's share of its drop recovered after k steps (a line per k of ``lines``,
    keyed by k; one without points draws nothing but keeps its dash) against one grid axis."""
    go = _go()
    figure = go.Figure()
    for (steps, (xs, points)), dash in zip(lines.items(), ("dot", "dash", "solid"), strict=False):
        if not xs:
            continue
        figure.add_trace(
            go.Scatter(
                x=xs, y=[p["mean"] for p in points], mode="lines+markers",
                name=f"after {steps} steps", error_y=error_bars(points),
                line={"color": ARM_COLORS.get(CONCEPT_ARM, OTHER_COLOR), "dash": dash},
            )
        )  # fmt: skip
    figure.update_layout(
        xaxis_title=axis, yaxis_title="share of the drop at pruning recovered", margin={"t": 30}
    )
    return figure
