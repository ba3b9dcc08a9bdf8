"""The run report's Plotly figures, apart from its prose: each function draws data it is handed
(curves, a summary's numbers, an arm's analyses) and returns a ``plotly.graph_objects.Figure``;
the section modules choose the data, write the sentences around the figure and place it.

Nothing here reads a run directory or decides what a number means; plotly is imported only
when a figure is drawn (it is the ``[report]`` extra)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuroplastic.config import CONCEPT_ARM, RANDOM_ARM
from neuroplastic.core.curves import RECOVERY_TARGET
from neuroplastic.extras import require
from neuroplastic.report.style import ARM_COLORS, DEAD_COLOR, LAYER_COLORS

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from neuroplastic.analysis.arm_analysis import ArmAnalysis
    from neuroplastic.analysis.reappearance import PrimedNeurons

#: the vertical lines that mark where a stage or a round starts
START_LINE = {"dash": "dot", "width": 1, "color": "#8c959f"}
NOTE_FONT = {"size": 9, "color": "#57606a"}


def _go() -> Any:
    return require("plotly.graph_objects", "the report's plots")


def _subplots(**layout: Any) -> Figure:
    _go()  # the clear message when plotly is missing, before plotly.subplots fails to import
    from plotly.subplots import make_subplots

    return make_subplots(**layout)


def arm_line(arm: str) -> dict[str, Any]:
    """The concept arm solid, every control dashed, in its arm's colour."""
    return {"color": ARM_COLORS.get(arm), **({} if arm == CONCEPT_ARM else {"dash": "dash"})}


def concept_on_top(curves: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Each arm's curve, the concept arm's last so it is drawn over a control it coincides
    with (two identical curves would otherwise show as the control alone)."""
    arms = list(curves.groupby("arm", sort=False))
    return sorted(arms, key=lambda item: item[0] == CONCEPT_ARM)


def stage_starts(curves: pd.DataFrame) -> list[tuple[str, float]]:
    """(stage, step where its training starts = the previous stage's last step) of every stage
    after the first, from the first arm; evaluations inside a stage (``retrain-1@10``) count
    as that stage."""
    arm = curves["arm"].iloc[0]
    rows = curves[curves["arm"] == arm]
    ends = rows.groupby(rows["stage"].str.partition("@")[0], sort=False)["step"].max()
    names, steps = list(ends.index), list(ends.values)
    starts: list[tuple[str, float]] = []
    for i in range(1, len(names)):
        if starts and starts[-1][1] == float(steps[i - 1]):  # e.g. pruning takes no steps
            starts[-1] = (f"{starts[-1][0]}, {names[i]}", starts[-1][1])
        else:
            starts.append((names[i], float(steps[i - 1])))
    return starts


def recovery_grid(
    curves: pd.DataFrame, *, concept: str, main: str, other: str, score: str, metric: str
) -> Figure:
    """One panel per entity type (``main`` first, then ``other``): every arm's score against
    training step (``recovery_curves``), dotted lines where each stage starts."""
    go = _go()
    entities = list(dict.fromkeys(curves["entity"]))
    entities.sort(key=lambda e: (e != main, e != other, e))
    n_cols = min(3, len(entities))
    n_rows = math.ceil(len(entities) / n_cols)
    titles = [f"{e} (the concept)" if e == concept else e for e in entities]
    fig = _subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=titles,
        shared_yaxes=True,
        horizontal_spacing=0.05,
        vertical_spacing=0.14,
    )
    for i, entity in enumerate(entities):
        row, col = i // n_cols + 1, i % n_cols + 1
        for arm, group in concept_on_top(curves[curves["entity"] == entity]):
            fig.add_trace(
                go.Scatter(
                    x=group["step"],
                    y=group["value"],
                    mode="lines+markers",
                    name=f"{arm} arm",
                    legendgroup=arm,
                    showlegend=i == 0,
                    line=arm_line(arm),
                    customdata=group["stage"],
                    hovertemplate="%{customdata}, step %{x}<br>"
                    + score
                    + " %{y:.3f}<extra>"
                    + arm
                    + "</extra>",
                ),
                row=row,
                col=col,
            )
    for stage, step in stage_starts(curves):
        for i in range(len(entities)):
            label = {
                "annotation_text": stage,
                "annotation_textangle": -90,  # upright labels overlap when close
                "annotation_position": "bottom right",
                "annotation_font": NOTE_FONT,
            }
            fig.add_vline(
                x=step,
                line=START_LINE,
                row=i // n_cols + 1,
                col=i % n_cols + 1,
                **(label if i == 0 else {}),
            )
    if metric == "f1":
        fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(title_text="training step", row=n_rows)
    fig.update_yaxes(title_text=score, col=1)
    fig.update_layout(
        height=330 * n_rows,
        margin={"t": 50, "b": 40, "l": 50, "r": 20},
        legend={"orientation": "h", "y": -0.12},
    )
    return fig


def headline(curves: pd.DataFrame, *, main: str, score: str, metric: str) -> Figure:
    """``main``'s score against retraining step, the concept arm over its random control."""
    go = _go()
    fig = go.Figure(
        [
            go.Scatter(
                x=group["step"],
                y=group["value"],
                mode="lines+markers",
                name=f"{arm} arm",
                line=arm_line(arm),
            )  # fmt: skip
            for arm, group in concept_on_top(curves)
        ]
    )
    controlled = set(curves["arm"]) >= {CONCEPT_ARM, RANDOM_ARM}
    fig.update_layout(
        title=f"{main} {score} while retraining"
        + (": the concept arm against its control" if controlled else ": the concept arm"),
        xaxis_title="retraining step",
        yaxis_title=f"{main} {score}",
        height=380,
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
        legend={"orientation": "h", "y": -0.2},
    )
    if metric == "f1":
        fig.update_yaxes(range=[0, 1.02])
    return fig


def chase_recovery(
    metrics: pd.DataFrame,
    *,
    column: str,
    arms: Sequence[str],
    round_starts: Sequence[tuple[int, float]],
    base_score: float | None,
    concept: str,
) -> Figure:
    """The concept's F1 (``column`` of the chase's evaluation rows) over every round, per arm of
    ``arms``; a dotted line where each round starts and a dashed one at
    :data:`~neuroplastic.config.RECOVERY_TARGET` of ``base_score``."""
    go = _go()
    figure = go.Figure()
    for arm, group in metrics.groupby("arm", sort=False):
        if arm not in arms:
            continue
        group = group.sort_values("step", kind="stable")
        figure.add_trace(
            go.Scatter(
                x=group["step"],
                y=group[column],
                mode="lines+markers",
                name=f"{arm} arm",
                line={"color": ARM_COLORS.get(arm)},
                customdata=group["stage"],
                hovertemplate="%{customdata}, step %{x}<br>F1 %{y:.3f}<extra>" + arm + "</extra>",
            )
        )
    for number, step in round_starts:
        figure.add_vline(
            x=step,
            line=START_LINE,
            annotation_text=f"round {number}",
            annotation_font=NOTE_FONT,
        )
    if base_score:
        figure.add_hline(
            y=RECOVERY_TARGET * base_score,
            line={"dash": "dash", "width": 1, "color": "#57606a"},
            annotation_text=f"{RECOVERY_TARGET:.0%} of base",
            annotation_font={"size": 9},
        )
    figure.update_layout(
        xaxis_title="training step (across rounds)",
        yaxis={"title": f"{concept} F1", "range": [0, 1.02]},
        height=360,
        margin={"t": 40, "b": 40, "l": 50, "r": 20},
    )
    return figure


def chase_collateral(
    rounds: Sequence[Mapping[str, Any]], base: Mapping[str, float], entities: Sequence[str]
) -> Figure:
    """One panel per entity type of ``entities``: its F1 after each round's retraining against
    the neurons held so far, per arm, from the base model (0 held)."""
    go = _go()
    fig = _subplots(rows=1, cols=len(entities), subplot_titles=entities, shared_yaxes=True)
    arms = list(dict.fromkeys(arm for record in rounds for arm in record["arms"]))
    for c, entity in enumerate(entities, start=1):
        for arm in arms:
            points = [(0, base.get(entity), "base")] + [
                (
                    r["arms"][arm]["held"],
                    r["arms"][arm]["retrained"].get(entity),
                    f"round {r['round']}",
                )
                for r in rounds
                if arm in r["arms"]
            ]
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    customdata=[p[2] for p in points],
                    mode="lines+markers",
                    name=f"{arm} arm",
                    legendgroup=arm,
                    showlegend=c == 1,
                    line={"color": ARM_COLORS.get(arm)},
                    hovertemplate="%{customdata}: %{x} held<br>F1 %{y:.3f}<extra>"
                    + arm
                    + "</extra>",
                ),
                row=1,
                col=c,
            )
        fig.update_xaxes(title_text="neurons held", row=1, col=c)
    fig.update_yaxes(title_text="F1 after retraining", range=[0, 1.02], row=1, col=1)
    fig.update_layout(height=340, margin={"t": 40, "b": 40, "l": 50, "r": 20})
    return fig


def layer_saliency(analyses: Mapping[str, ArmAnalysis], n_top: int) -> Figure:
    """Per arm (a row): each layer's mean saliency per stage (left) and its share of the top
    ``n_top`` neurons of the arm's fixed population (right, stacked bars)."""
    go = _go()
    arms = list(analyses)
    fig = _subplots(
        rows=len(arms),
        cols=2,
        column_titles=["mean saliency per layer", f"layers of the top {n_top}"],
        row_titles=[f"{arm} arm" for arm in arms],
        horizontal_spacing=0.08,
        vertical_spacing=0.12,
    )
    for r, arm in enumerate(arms, start=1):
        frame = analyses[arm].layer_saliency
        for layer, group in frame.groupby("layer"):
            color = LAYER_COLORS[int(layer) % len(LAYER_COLORS)]
            fig.add_trace(
                go.Scatter(
                    x=group["stage"],
                    y=group["mean"],
                    mode="lines+markers",
                    name=f"layer {layer}",
                    legendgroup=f"layer {layer}",
                    showlegend=r == 1,
                    line={"color": color},
                    customdata=np.stack([group["n_alive"], group["n"]], axis=1),
                    hovertemplate="%{x}: mean saliency %{y:.3f} over %{customdata[0]} of "
                    "%{customdata[1]} neurons alive<extra>layer " + str(layer) + "</extra>",
                ),
                row=r,
                col=1,
            )
            fig.add_trace(
                go.Bar(
                    x=group["stage"],
                    y=group["top_share"],
                    name=f"layer {layer}",
                    legendgroup=f"layer {layer}",
                    showlegend=False,
                    marker={"color": color},
                    hovertemplate="%{x}: %{y:.0%} of the top neurons<extra>layer "
                    + str(layer)
                    + "</extra>",
                ),
                row=r,
                col=2,
            )
        fig.update_yaxes(range=[0, 1], row=r, col=1)
        fig.update_yaxes(range=[0, 1], tickformat=".0%", row=r, col=2)
    fig.update_layout(
        barmode="stack", height=300 * len(arms) + 60, margin={"t": 40, "b": 30, "l": 50, "r": 40}
    )
    return fig


def concept_depth(analyses: Mapping[str, ArmAnalysis], n_top: int, n_layers: int) -> Figure:
    """Per arm, the saliency-weighted mean layer of the top ``n_top`` neurons per stage: of the
    fixed population (solid) and of each stage's own top set (dotted)."""
    go = _go()
    depth = go.Figure()
    lines = (
        ("mean_layer_fixed", "fixed population", {}),
        ("mean_layer", "each stage's own top set", {"dash": "dot", "width": 1}),
    )
    for arm, analysis in analyses.items():
        frame = analysis.depth
        for column, what, style in lines:
            depth.add_trace(
                go.Scatter(
                    x=frame["stage"], y=frame[column], mode="lines+markers",
                    name=f"{arm} arm, {what}", line={"color": ARM_COLORS.get(arm), **style},
                )
            )  # fmt: skip
    depth.update_layout(
        title=f"Mean layer of the top {n_top} neurons",
        height=330,
        yaxis={"title": "layer", "range": [-0.3, n_layers - 0.7], "dtick": 1},
        margin={"t": 50, "b": 30, "l": 50, "r": 20},
    )
    return depth


def heatmaps_height(stages: Sequence[str]) -> int:
    """The heatmaps' height in pixels: a band per stage."""
    return max(300, 95 * len(stages) + 80)


def saliency_heatmaps(analyses: Mapping[str, ArmAnalysis], stages: Sequence[str]) -> Figure:
    """One panel per (stage, arm): every neuron's saliency, layers as rows, each layer's neurons
    sorted by their saliency at the arm's first stage; dead neurons are gaps (grey)."""
    go = _go()
    arms = list(analyses)
    fig = _subplots(
        rows=len(stages),
        cols=len(arms),
        shared_xaxes=True,
        column_titles=[f"{arm} arm" for arm in arms],
        row_titles=list(stages),
        vertical_spacing=0.02,
        horizontal_spacing=0.03,
    )
    for c, arm in enumerate(arms, start=1):
        data = analyses[arm].run
        base = data.stages[data.first].ranking
        order = np.argsort(-base.saliency.numpy(), axis=1, kind="stable")
        for r, stage in enumerate(stages, start=1):
            if stage not in data.stages:
                continue
            saliency = data.stages[stage].ranking.saliency.numpy()
            z = np.take_along_axis(saliency, order, axis=1).astype(np.float32)
            fig.add_trace(
                go.Heatmap(
                    z=z,
                    customdata=order.astype(np.int32),
                    coloraxis="coloraxis",
                    hoverongaps=False,
                    hovertemplate="layer %{y}, neuron %{customdata}<br>saliency %{z:.3f}"
                    "<extra>" + f"{arm}, {stage}" + "</extra>",
                ),
                row=r,
                col=c,
            )
            fig.update_yaxes(
                tickmode="array",
                tickvals=list(range(base.n_layers)),
                autorange="reversed",
                tickfont={"size": 8},
                row=r,
                col=c,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        height=heatmaps_height(stages),
        plot_bgcolor=DEAD_COLOR,  # NaN cells (dead neurons) are gaps: the background shows
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0,
            "cmax": 1,
            "colorbar": {"title": {"text": "saliency"}, "len": 0.6},
        },
        margin={"t": 40, "b": 20, "l": 40, "r": 90},
    )
    return fig


def primed_scatter(primed: Mapping[str, PrimedNeurons]) -> Figure:
    """Per arm, each neuron's saliency gain against its similarity to the concept before
    pruning, titled with Spearman's rho."""
    go = _go()
    titles = [f"{arm} arm: ρ = {p.rho:+.2f}" for arm, p in primed.items()]
    fig = _subplots(rows=1, cols=len(primed), shared_yaxes=True, subplot_titles=titles)
    for c, (arm, p) in enumerate(primed.items(), start=1):
        frame = p.neurons
        fig.add_trace(
            go.Scattergl(
                x=frame["similarity"],
                y=frame["gain"],
                mode="markers",
                name=f"{arm} arm",
                marker={"color": ARM_COLORS.get(arm), "size": 4, "opacity": 0.5},
                customdata=np.stack([frame["layer"], frame["neuron"]], axis=1),
                hovertemplate="L%{customdata[0]}:N%{customdata[1]}<br>similarity %{x:.2f}"
                "<br>gain %{y:.2f}<extra></extra>",
            ),
            row=1,
            col=c,
        )
        fig.update_xaxes(title_text="similarity to the concept before pruning", row=1, col=c)
    fig.update_yaxes(title_text="saliency gain", row=1, col=1)
    fig.update_layout(height=360, showlegend=False, margin={"t": 40, "b": 40, "l": 50, "r": 20})
    return fig


def savings_curves(
    curves: pd.DataFrame, *, arms: Sequence[str], target: float, concept: str
) -> Figure:
    """The concept's F1 against retraining step for each of ``arms`` present in ``curves``, a
    dotted line at ``target`` (:data:`~neuroplastic.config.RECOVERY_TARGET` of the concept
    arm's base F1)."""
    go = _go()
    fig = go.Figure()
    for arm in arms:
        color = ARM_COLORS[arm]
        group = curves[curves["arm"] == arm]
        if group.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=group["step"],
                y=group["value"],
                mode="lines+markers",
                name=f"{arm} arm",
                line={"color": color},
                hovertemplate="step %{x}<br>" + concept + " F1 %{y:.3f}<extra>" + arm + "</extra>",
            )
        )
    fig.add_hline(
        y=target,
        line={"dash": "dot", "width": 1, "color": "#57606a"},
        annotation_text=f"target: {RECOVERY_TARGET:.0%} of the concept arm's base F1",
        annotation_font=NOTE_FONT,
    )
    fig.update_yaxes(range=[0, 1.02], title_text=f"{concept} F1")
    fig.update_xaxes(title_text="retraining step (0: right after the removal)")
    fig.update_layout(height=380, margin={"t": 30, "b": 40, "l": 50, "r": 20})
    return fig
