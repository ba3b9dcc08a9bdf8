"""``report.html``: one self-contained page that shows where a removed concept came back.

Built from a run directory only (no model needed), with :mod:`neuroplastic.analysis` for the
numbers, Plotly for the plots and CircuitsVis for the neuron views, each bundle inlined once
(:class:`neuroplastic.report.html.HtmlPage`), so the file opens from disk with no network. Sections,
in reading order: key numbers, the recovery curves, a chase's rounds (``--rounds``) and the
pre-empting arm against its control (``--preempt``) where the run has them, saliency per layer
and the depth of the
concept, layer x neuron saliency heatmaps, the neurons where the concept reappeared, the pruned
neurons, primed neurons, how well each predictor named the new home in advance, polysemantic
neurons, and the config. The random arm is always shown
beside the concept arm: it is the control that says which changes are about the concept.

One run is one sample. The page describes it (means, medians, counts, a rank correlation over
the neurons of one model) and computes no interval or p-value from neurons; intervals come from
repeating the run over seeds (``neuroplastic sweep``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from neuroplastic.analysis.arm_analysis import ArmAnalysis, analyse_arm
from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.polysemantic import common_population
from neuroplastic.analysis.predictor_labels import DESCRIPTIONS, TRUTHS
from neuroplastic.analysis.scores import recovery_curves, stage_gaps
from neuroplastic.config import ExperimentConfig
from neuroplastic.core.curves import RECOVERY_TARGET
from neuroplastic.core.neurons import CONTROL_KINDS
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.chase import rounds_run
from neuroplastic.extras import require
from neuroplastic.report.html import HtmlPage
from neuroplastic.report.relearning import relearning
from neuroplastic.report.style import ARM_COLORS
from neuroplastic.report.views import add_side_by_side, examples_from_top_k
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.lock import reading
from neuroplastic.store.manifest import CorruptFile
from neuroplastic.store.rundir import RunDir

__all__ = ["build_report", "run_warnings", "write_report"]

LAYER_COLORS = (
    "#440154",
    "#3b528b",
    "#21918c",
    "#5ec962",
    "#fde725",
    "#f89540",
    "#cc4778",
    "#7e03a8",
    "#0d0887",
    "#b12a90",
    "#fca636",
    "#2a788e",
)
#: Behind the heatmaps, so dead neurons (NaN saliency, drawn as gaps) show grey: no Viridis
#: colour is grey.
DEAD_COLOR = "#bdbdbd"
Similarity = Literal["model", "sentence", "none"]


ONE_RUN = (
    "Every number on this page describes this one run (one seed): means, medians, counts and "
    "rank correlations over the neurons of one model are descriptions, not estimates with an "
    "error, and no interval or p-value is computed from neurons. Intervals come from repeating "
    "the run over seeds: `neuroplastic sweep`."
)
NOT_RECORDED = "not recorded"
WARNING_STYLE = (
    "border:2px solid #cf222e;background:#ffebe9;color:#82071e;padding:.6em .9em;"
    "border-radius:6px;font-weight:600"
)


def write_report(
    run_dir: str | Path | RunDir,
    out: str | Path | None = None,
    *,
    top: int | float = 0.01,
    n_neurons: int = 10,
    n_views: int = 5,
    similarity: Similarity | TokenEmbeddings = "model",
) -> Path:
    """Write ``report.html`` into the run directory (or to ``out``); returns its path.

    ``top``: the most salient live neurons per stage (a count, or a fraction of all neurons; at
    least 10) used for the layer shares and the depth of the concept. ``n_neurons`` rows in the
    neuron tables, ``n_views`` of them with before/after CircuitsVis views. ``similarity``: token
    vectors for concept similarity, the model's input embeddings (default), the offline MiniLM
    sentence model, none, or your own :class:`TokenEmbeddings`.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    with reading(run):
        page = build_report(
            run, top=top, n_neurons=n_neurons, n_views=n_views, similarity=similarity
        )
        return page.write(Path(out) if out is not None else run.report_path)


def build_report(
    run: RunDir,
    *,
    top: int | float = 0.01,
    n_neurons: int = 10,
    n_views: int = 5,
    similarity: Similarity | TokenEmbeddings = "model",
) -> HtmlPage:
    """The report as an :class:`HtmlPage` (see :func:`write_report`). Refused while a run
    writes the directory, or when a stage file is not the one the run wrote (its manifest)."""
    with reading(run):
        return _build_report(
            run, top=top, n_neurons=n_neurons, n_views=n_views, similarity=similarity
        )


def _build_report(
    run: RunDir,
    *,
    top: int | float,
    n_neurons: int,
    n_views: int,
    similarity: Similarity | TokenEmbeddings,
) -> HtmlPage:
    if not run.config_path.is_file():
        raise NeuroplasticError(f"{run.path} is not a neuroplastic run directory (no config.json)")
    config = run.config()
    arms = [arm for arm in run.arms() if run.stages(arm)]
    if not arms:
        raise NeuroplasticError(f"{run.path}: no arm has stage artifacts yet; nothing to report")
    warnings = run_warnings(run)
    loaded = {arm: ArmRun.load(run, arm) for arm in arms}
    some = next(iter(loaded.values()))
    n_total = some.stages[some.first].ranking.scores.numel()
    # A fraction of a small model can be a handful of neurons: take at least 10.
    n_top = max(min(10, n_total), round(top * n_total)) if isinstance(top, float) else int(top)
    embeddings, similarity_note = _embeddings(run, loaded, similarity)
    # Polysemantic neurons are counted over one population common to every arm, so that the
    # control's churn is counted on the same neurons as the concept arm's.
    common = common_population(loaded)
    analyses = {
        arm: analyse_arm(data, embeddings, top=n_top, n_reappeared=n_neurons, population=common)
        for arm, data in loaded.items()
    }
    summary = run.summary() if run.summary_path.is_file() else None
    metrics = run.metrics() if run.metrics_path.is_file() else pd.DataFrame()
    sentences = run.sentences() if run.sentences_path.is_file() else []

    concept = config["concept"]
    page = HtmlPage(f"Where did {concept} go? {config['model']}")
    for warning in warnings:
        page.raw(f'<p class="np-warning" style="{WARNING_STYLE}">{html.escape(warning)}</p>')
    page.paragraph(
        f"Run {run.path.name}: the MLP neurons most salient for {concept} "
        f"({config['method']} ranking) were ablated ({config['mode']} mode), and the model "
        f"retrained. {_control_sentence(config, summary)} "
        f"Saliency is a neuron's normalized rank for {concept} among the neurons alive at that "
        "stage (1 = most salient); an ablated (dead) neuron has none."
        + (
            f" Two more arms pre-empt the concept's new home: preempt also holds the "
            f"{config.get('preempt_count')} surviving neurons the {config['preempt']} predictor "
            "scored highest at the pruned stage, and preempt-random, its control, as many "
            "random survivors per layer."
            if config.get("preempt")
            else ""
        )
    )
    page.paragraph(ONE_RUN)
    _headline(page, metrics, concept)
    _key_numbers(page, analyses, summary, concept, n_top)
    _recovery(page, metrics, summary, concept)
    _chase(page, metrics, summary, concept)
    _preempt(page, summary, concept)
    relearning(page, metrics, summary, concept)
    _readable(page, summary, concept)
    _saliency(page, analyses, n_top)
    _heatmaps(page, analyses)
    stored = _stored_activations(run)
    _reappeared(page, analyses, sentences, n_views, similarity_note, stored)
    _pruned(page, analyses, config)
    _primed(page, analyses, similarity_note)
    _prediction(page, summary, concept)
    _polysemantic(page, analyses, sentences, n_neurons, n_views, stored)
    page.heading("Configuration")
    with page.details("config.json"):
        page.preformatted(json.dumps(config, indent=2, sort_keys=True))
    with page.details("Neuron sets"):
        for arm, data in loaded.items():
            page.paragraph(
                f"{arm}: {len(data.ablated)} neurons, {data.ablated.description}; "
                f"per layer {dict(sorted(data.ablated.per_layer_counts().items()))}"
            )
    return page


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def run_warnings(run: RunDir) -> list[str]:
    """What the report of ``run`` cannot show, one sentence each: the stages an unfinished run
    has not computed yet, and stages left out because their files were deleted."""
    config = ExperimentConfig.from_run(run.config(), source=str(run.config_path))
    store = Checkpointer(run)
    # Rounds a chase did not run (--stop-below) are not missing.
    missing = store.missing_stages(config.arms, config.stages, rounds_run(store, config))
    warnings = []
    todo: dict[str, list[str]] = {}
    for gap in missing:
        if not gap.done:
            todo.setdefault(gap.arm, []).append(gap.stage)
    rerun = f"rerun `neuroplastic run --out {run.path}` with the same settings to finish it"
    if todo:
        listing = "; ".join(f"{arm} arm: {', '.join(stages)}" for arm, stages in todo.items())
        warnings.append(
            f"Unfinished run: these stages have not been computed yet: {listing}. This report "
            f"shows the stages done so far; {rerun}."
        )
    elif not run.summary_path.is_file():
        warnings.append(
            "Unfinished run: every stage is done but there is no summary.json (the run "
            f"stopped before writing it); {rerun}."
        )
    for gap in missing:
        if not gap.done:
            continue
        left_out = f"Stage {gap.stage} of the {gap.arm} arm is left out of this report"
        if not gap.files:
            warnings.append(f"{left_out}: its files are not in the run's manifest.")
            continue
        one = len(gap.files) == 1
        warnings.append(
            f"{left_out}: {', '.join(gap.files)} {'is' if one else 'are'} missing, deleted "
            f"after the run wrote {'it' if one else 'them'}; restore {'it' if one else 'them'} "
            "or rerun into a new --out."
        )
    return warnings


def _embeddings(
    run: RunDir, loaded: dict[str, ArmRun], similarity: Similarity | TokenEmbeddings
) -> tuple[TokenEmbeddings | None, str]:
    if isinstance(similarity, TokenEmbeddings):
        return similarity, f"Similarity: cosine of centroids of {similarity.source}."
    if similarity == "none":
        return None, "Similarity not computed (similarity='none')."
    if similarity == "sentence":
        vocabulary: dict[int, str] = {}
        for data in loaded.values():
            vocabulary.update(data.vocabulary)
        embeddings = TokenEmbeddings.from_sentence_model(vocabulary)
        return embeddings, f"Similarity: cosine of centroids of {embeddings.source}."
    if similarity != "model":
        raise NeuroplasticError(f"similarity must be model, sentence or none, got {similarity!r}")
    try:
        embeddings = run.embeddings()
    except CorruptFile:
        raise  # a damaged run file is an error, not a note on the page
    except NeuroplasticError as error:  # none stored (an older run)
        return None, f"Similarity not computed: {error}."
    return embeddings, (
        "Similarity of two token sets: cosine between their centroids in the base model's input "
        "embedding space (centered, each token unit length); 1 = same direction, ~0 unrelated."
    )


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


#: what each kind of control is, as the report says it
REPORTED_CONTROLS = {
    **CONTROL_KINDS,
    "random-projection": "a random orthogonal projection of the erasure's rank at the same "
    "hook points",
}


def _key_numbers(
    page: HtmlPage, analyses: dict[str, ArmAnalysis], summary: dict | None, concept: str, n_top: int
) -> None:
    page.heading("Key numbers")
    page.paragraph("Base model: " + _base_training((summary or {}).get("base")))
    if summary is None:
        page.paragraph("No summary.json: scores per stage not recorded.")
    else:
        _stage_table(page, stage_gaps(summary), concept)
    arms_summary = (summary or {}).get("arms", {})
    rows: dict[str, dict[str, str]] = {}
    for arm, analysis in analyses.items():
        column: dict[str, str] = {}
        data = analysis.run
        removal = arms_summary.get(arm, {}).get("removal")
        if removal is not None:  # --removal leace|direction: no neuron is ablated
            column["removal"] = removal["what"]
        else:
            column["neurons ablated"] = str(len(data.ablated))
        if len(analyses) > 1 and removal is None:
            overlap = arms_summary.get(arm, {}).get("overlap_with_concept")
            column["of them also in the concept set"] = (
                "–" if arm == "concept" else NOT_RECORDED if overlap is None else str(overlap)
            )
        if arm == "random":
            kind = arms_summary.get(arm, {}).get("control")
            column["the control is"] = NOT_RECORDED if kind is None else REPORTED_CONTROLS[kind]
        recovered = arms_summary.get(arm, {}).get("recovery")
        if recovered is not None:
            column.update(_recovery_numbers(recovered))
        moved = analysis.relocation
        column[
            f"relocation of the top {n_top} while retraining, {moved.start} → {moved.end} "
            f"(one fixed population: {moved.n_population} neurons alive at every stage, outside "
            "the removed set)"
        ] = f"{moved.shift:+.2f} layers"
        column[
            f"shift of the top {n_top} at the removal alone, {moved.first} → {moved.start} "
            "(each stage's own top set; no training in between: not movement)"
        ] = f"{moved.removal_shift:+.2f} layers"
        shares = analysis.layer_saliency
        last = shares[shares["stage"] == data.last].set_index("layer")["top_share"]
        column[f"layer holding most top neurons of the population at {data.last}"] = (
            f"layer {int(last.idxmax())} ({last.max():.0%})"
        )
        if analysis.primed is not None:
            p = analysis.primed
            column["primed: Spearman ρ(similarity to concept, saliency gain)"] = (
                f"{p.rho:+.2f} over {p.n} neurons"
            )
            column[
                "primed, the mechanical part taken out: partial ρ(similarity, saliency at the "
                "end | saliency at the start)"
            ] = f"{p.partial_rho:+.2f}"
        poly = analysis.polysemanticity
        counts = poly.counts.set_index("stage")
        column[
            f"polysemantic neurons: {data.first} → {data.last} (of the neurons alive at every "
            "stage of every arm, outside every removed set)"
        ] = (
            f"{counts.loc[data.first, 'n_polysemantic']} → "
            f"{counts.loc[data.last, 'n_polysemantic']} of {poly.n_population}"
        )
        trace = analysis.pruned.stages.set_index("stage")
        column[f"ablated neurons alive at {data.last}"] = (
            f"{trace.loc[data.last, 'n_alive']} of {trace.loc[data.last, 'n']}"
        )
        rows[arm] = column
    # Measures as the (unnamed) index: row headers, left-aligned.
    others = [arm for arm in rows if arm not in ("concept", "random")]
    page.table(
        pd.DataFrame(rows).fillna("–"),
        caption="Concept arm beside the random arm"
        + (f" and the {' and '.join(others)} arms" if others else ""),
    )


def _control_sentence(config: dict[str, Any], summary: dict | None) -> str:
    """What the control arm holds, as the run drew it."""
    if config.get("baseline") == "none":
        return "There is no control arm."
    kind = ((summary or {}).get("arms", {}).get("random", {})).get("control")
    if kind == "complement":
        return (
            "The control arm (named random in the files) holds the complement of the concept "
            "set: at this size the pool outside the set is no larger than the set, so the "
            "control is not a random draw and is the same for every seed."
        )
    if kind == "random-any":
        return (
            "The random arm holds as many neurons drawn uniformly from all neurons, the "
            "concept's included (their overlap is in the key numbers): the control."
        )
    per = "in total" if config.get("baseline") == "random-global" else "per layer"
    return f"The random arm ablates as many random neurons {per}, outside the set: the control."


def _recovery_numbers(recovered: dict[str, Any]) -> dict[str, str]:
    """An arm's recovery measures with the grid they were read from."""
    grid = recovered.get("grid") or []
    steps = recovered.get("steps_to_recover")
    budget = recovered.get("budget")
    numbers = {
        f"steps to 90% of base (evaluated at steps {_grid_text(grid)})": (
            _steps(steps) if recovered.get("reached") else f"not within {budget:g} (censored)"
        )
    }
    for step, share in (recovered.get("share_recovered") or {}).items():
        numbers[f"share of the drop recovered after {step} steps"] = (
            "n/a (no drop, or beyond the grid)" if share is None else f"{share:.2f}"
        )
    return numbers


def _grid_text(grid: Sequence[float]) -> str:
    return ", ".join(f"{g:g}" for g in grid)


#: Why base fine-tuning stopped, as summary.json records it.
STOPPED = {
    "plateau": "the loss on the probe sentences stopped improving",
    "cap": "it reached base_steps before a plateau",
    "checkpoint": "loaded from a checkpoint, not fine-tuned in this run",
}


def _base_training(base: dict | None) -> str:
    if not base:
        return f"fine-tuning length and stopping rule {NOT_RECORDED}."
    stopped = base["stopped"]
    return (
        f"fine-tuned for {base['steps']} steps, stopped: {stopped} "
        f"({STOPPED.get(stopped, 'see the experiment')})."
    )


def _score_names(metric: str, concept: str) -> tuple[str, str, str]:
    """(what the score is called, the concept's entity, the other entity shown)."""
    if metric == "f1":
        return "F1", concept, "overall"
    return "LM loss", "concept", "other"


def _stage_table(page: HtmlPage, gaps: pd.DataFrame, concept: str) -> None:
    """Per stage of the concept arm: its score, the gap to base and the gap to the random arm
    at the same stage (the paired control), for the concept and overall."""
    name, main, other = _score_names(gaps.attrs["metric"], concept)
    arm = gaps[gaps["arm"] == "concept"]
    control = gaps[gaps["arm"] == "random"].set_index(["stage", "entity"])["value"]
    rows = []
    for stage, group in arm.groupby("stage", sort=False):
        by_entity = group.set_index("entity")
        row: dict[str, Any] = {"stage": stage, "step": int(group["step"].iloc[0])}
        for entity in (main, other):
            if entity not in by_entity.index:
                continue
            entry = by_entity.loc[entity]
            row[f"{entity} {name}"] = _fmt(entry["value"], ".3f")
            row[f"{entity} gap to base"] = _gap(entry["gap_to_base"])
            if not control.empty:
                row[f"random arm {entity} {name}"] = _fmt(control.get((stage, entity)), ".3f")
                row[f"{entity} gap to control"] = _gap(entry["gap_to_control"])
        rows.append(row)
    page.table(
        pd.DataFrame(rows),
        caption=f"Concept arm, per stage: {name}, its gap to base"
        + (
            ", and its gap to the random arm at the same stage (the paired control)"
            if not control.empty
            else " (no random arm in this run: no control)"
        ),
        index=False,
    )


def _gap(value: Any) -> str:
    return NOT_RECORDED if value is None or not math.isfinite(value) else f"{value:+.3f}"


def _metrics_metric(metrics: pd.DataFrame) -> str | None:
    """``f1`` (NER), ``lm_loss`` (language modelling) or None, from the metrics' columns."""
    for metric in ("f1", "lm_loss"):
        if any(c.startswith(f"{metric}_") for c in metrics.columns):
            return metric
    return None


def _recovery(page: HtmlPage, metrics: pd.DataFrame, summary: dict | None, concept: str) -> None:
    go = require("plotly.graph_objects", "the report's plots")
    from plotly.subplots import make_subplots

    page.heading("Recovery")
    metric = _metrics_metric(metrics)
    if metric is None:
        page.paragraph("No evaluations recorded (metrics.jsonl is missing or empty).")
    else:
        curves = recovery_curves(metrics, metric=metric)
        name, main, other = _score_names(metric, concept)
        entities = list(dict.fromkeys(curves["entity"]))
        entities.sort(key=lambda e: (e != main, e != other, e))
        n_cols = min(3, len(entities))
        n_rows = math.ceil(len(entities) / n_cols)
        titles = [f"{e} (the concept)" if e == concept else e for e in entities]
        fig = make_subplots(
            rows=n_rows,
            cols=n_cols,
            subplot_titles=titles,
            shared_yaxes=True,
            horizontal_spacing=0.05,
            vertical_spacing=0.14,
        )
        for i, entity in enumerate(entities):
            row, col = i // n_cols + 1, i % n_cols + 1
            for arm, group in _concept_on_top(curves[curves["entity"] == entity]):
                fig.add_trace(
                    go.Scatter(
                        x=group["step"],
                        y=group["value"],
                        mode="lines+markers",
                        name=f"{arm} arm",
                        legendgroup=arm,
                        showlegend=i == 0,
                        line=_arm_line(arm),
                        customdata=group["stage"],
                        hovertemplate="%{customdata}, step %{x}<br>"
                        + name
                        + " %{y:.3f}<extra>"
                        + arm
                        + "</extra>",
                    ),
                    row=row,
                    col=col,
                )
        for stage, step in _stage_starts(curves):
            for i in range(len(entities)):
                fig.add_vline(
                    x=step,
                    line={"dash": "dot", "width": 1, "color": "#8c959f"},
                    row=i // n_cols + 1,
                    col=i % n_cols + 1,
                    **(
                        {
                            "annotation_text": stage,
                            "annotation_textangle": -90,  # upright labels overlap when close
                            "annotation_position": "bottom right",
                            "annotation_font": {"size": 9, "color": "#57606a"},
                        }
                        if i == 0
                        else {}
                    ),
                )
        if metric == "f1":
            fig.update_yaxes(range=[0, 1.02])
        fig.update_xaxes(title_text="training step", row=n_rows)
        fig.update_yaxes(title_text=name, col=1)
        fig.update_layout(
            height=330 * n_rows,
            margin={"t": 50, "b": 40, "l": 50, "r": 20},
            legend={"orientation": "h", "y": -0.12},
        )
        page.paragraph(
            ("Entity F1" if metric == "f1" else "Language-modelling loss on tokens of each label")
            + " against retraining step (step 0 holds the base model and, below it, the model "
            "right after pruning), concept arm (red, drawn on top) and random arm (blue, "
            "dashed)"
            + (
                ", preempt arm (purple) and its control, the preempt-random arm (grey)"
                if "preempt" in set(curves["arm"])
                else ""
            )
            + (
                ", the oracle, the preempt-oracle arm (green)"
                if "preempt-oracle" in set(curves["arm"])
                else ""
            )
            + "; dotted lines mark where each stage starts. The "
            "paper: performance on the concept collapses when its neurons are pruned and "
            "recovers within a few epochs of retraining. Judge the recovery against the random "
            "arm at the same step, the paired control (same batches, same order, same dropout, "
            "same schedule; only the held neurons differ), not only against base: retraining "
            "alone moves both."
        )
        page.plotly(fig)
    if summary:
        gaps = stage_gaps(summary)
        name = _score_names(gaps.attrs["metric"], concept)[0]
        with page.details(f"{name} of every entity type at the end of every stage"):
            page.table(
                _gap_table(gaps, name),
                caption="gap to base: score - base score; gap to control: concept arm - random "
                "arm at the same stage"
                + (
                    "; preempt arm gap to control: preempt arm - preempt-random arm"
                    if "preempt" in set(gaps["arm"])
                    else ""
                ),
                index=False,
            )
    _seen_in_train(page, summary)


def _gap_table(gaps: pd.DataFrame, name: str) -> pd.DataFrame:
    """One row per (stage, entity type): each arm's score and gap to base, and the concept arm's
    gap to the random arm."""
    rows = []
    for (stage, entity), group in gaps.groupby(["stage", "entity"], sort=False):
        by_arm = group.set_index("arm")
        row: dict[str, Any] = {"stage": stage, "step": int(group["step"].iloc[0]), "entity": entity}
        for arm in by_arm.index:
            row[f"{arm} arm {name}"] = _fmt(by_arm.loc[arm, "value"], ".3f")
            row[f"{arm} arm gap to base"] = _gap(by_arm.loc[arm, "gap_to_base"])
        if "concept" in by_arm.index and len(by_arm) > 1:
            row["gap to control"] = _gap(by_arm.loc["concept", "gap_to_control"])
        if "preempt" in by_arm.index and "preempt-random" in by_arm.index:
            row["preempt arm gap to control"] = _gap(by_arm.loc["preempt", "gap_to_control"])
        rows.append(row)
    return pd.DataFrame(rows)


def _seen_in_train(page: HtmlPage, summary: dict | None) -> None:
    data = (summary or {}).get("data", {})
    splits = {
        "validation": data.get("validation_seen_in_train"),
        "probe": data.get("probe_seen_in_train"),
    }
    page.paragraph(
        "Entity mentions of the validation sentences (where F1 is measured) and of the probe "
        "sentences (where neurons are ranked) whose text also occurs as a mention in the "
        "training sentences. A recovery on seen mentions could be memory of the training "
        "sentences rather than a relearned concept: the lower the share, the more the F1 says "
        "about the concept itself."
    )
    if not any(splits.values()):
        page.paragraph(f"Mentions seen in training: {NOT_RECORDED} in summary.json.")
        return
    entities = list(dict.fromkeys(e for split in splits.values() for e in (split or {})))
    rows = []
    for entity in entities:
        row: dict[str, Any] = {"entity type": entity}
        for split, shares in splits.items():
            entry = (shares or {}).get(entity)
            if entry is None:
                row[f"{split} mentions"] = NOT_RECORDED
                continue
            row[f"{split} mentions"] = int(entry["mentions"])
            row[f"{split} seen in training"] = int(entry["seen"])
            row[f"{split} share seen"] = _fmt(entry["share"], ".1%")
        rows.append(row)
    page.table(
        pd.DataFrame(rows).fillna("–"),
        caption="Mentions seen in training, per entity type",
        index=False,
    )


def _readable(page: HtmlPage, summary: dict | None, concept: str) -> None:
    """Per arm, the layer x stage table of where the concept is linearly readable."""
    arms = {
        arm: [e for e in data["stages"] if e.get("readable")]
        for arm, data in (summary or {}).get("arms", {}).items()
    }
    arms = {arm: entries for arm, entries in arms.items() if entries}
    if not arms:
        return
    page.heading(f"Where {concept} is linearly readable")
    page.paragraph(
        f"Per layer (the residual stream after block l) and stage: the AUC on the validation "
        f"tokens of a logistic-regression probe for {concept} (its tokens against all others) "
        "trained on the probe sentences, with the arm's removal in place (its neurons held, or "
        "in regrow mode its weights as retraining left them). 0.5: the probe trained on the "
        f"probe sentences does not tell {concept}'s tokens apart on new ones; 1: perfectly; "
        "below 0.5: they still differ there, in the opposite direction. Removing neurons "
        "removes what the network computes from them, not necessarily what the residual "
        "stream carries: a removal can silence the concept for the tagging head while it "
        "stays readable here, and retraining can make it readable again before the head uses "
        "it. One run, one seed."
    )
    for arm, entries in arms.items():
        layers = sorted({int(k) for e in entries for k in e["readable"]})
        table = pd.DataFrame(
            {e["stage"]: [e["readable"].get(str(layer)) for layer in layers] for e in entries},
            index=pd.Index([f"layer {layer}" for layer in layers], name="layer"),
        )
        page.table(
            table, caption=f"{arm} arm: probe AUC per layer and stage", float_format="{:.3f}"
        )


def _concept_on_top(curves: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Each arm's curve, the concept arm's last so it is drawn over a control it coincides
    with (two identical curves would otherwise show as the control alone)."""
    arms = list(curves.groupby("arm", sort=False))
    return sorted(arms, key=lambda item: item[0] == "concept")


def _arm_line(arm: str) -> dict[str, Any]:
    """The concept arm solid, every control dashed, in its arm's colour."""
    return {"color": ARM_COLORS.get(arm), **({} if arm == "concept" else {"dash": "dash"})}


def _headline(page: HtmlPage, metrics: pd.DataFrame, concept: str) -> None:
    """The one figure the page leads with: the concept's recovery beside its control's."""
    metric = _metrics_metric(metrics)
    if metric is None:
        return
    go = require("plotly.graph_objects", "the report's plots")
    name, main, _ = _score_names(metric, concept)
    curves = recovery_curves(metrics, metric=metric)
    curves = curves[(curves["entity"] == main) & curves["arm"].isin(["concept", "random"])]
    if curves.empty:
        return
    fig = go.Figure(
        [
            go.Scatter(
                x=group["step"],
                y=group["value"],
                mode="lines+markers",
                name=f"{arm} arm",
                line=_arm_line(arm),
            )  # fmt: skip
            for arm, group in _concept_on_top(curves)
        ]
    )
    controlled = set(curves["arm"]) >= {"concept", "random"}
    fig.update_layout(
        title=f"{main} {name} while retraining"
        + (": the concept arm against its control" if controlled else ": the concept arm"),
        xaxis_title="retraining step",
        yaxis_title=f"{main} {name}",
        height=380,
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
        legend={"orientation": "h", "y": -0.2},
    )
    if metric == "f1":
        fig.update_yaxes(range=[0, 1.02])
    page.plotly(fig, height="380px")
    page.paragraph(
        "Step 0: the base model, then the model right after its neurons were removed. "
        f"The concept arm (red) removes the neurons most salient for {concept}"
        + (
            "; the random arm (blue, dashed), as many random neurons, on the same batches in "
            "the same order. The gap between the two is what removing the concept's neurons "
            "costs; how fast it closes is how fast the concept comes back."
            if controlled
            else " (this run has no control arm: --baseline none)."
        )
        + " One run, one seed: a sweep gives the spread across seeds."
    )


def _stage_starts(curves: pd.DataFrame) -> list[tuple[str, float]]:
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


ONE_SEED_SWEEP = (
    "These are one seed's numbers, a description of this run, not estimates: intervals come "
    "from repeating the run over seeds, `neuroplastic sweep {flags}`."
)


def _steps(value: Any) -> str:
    """Steps to recover: 0 means the score never fell below the target."""
    if value is None:
        return "not reached"
    return "0 (never below)" if value == 0 else f"{value:.1f}"


def _chase(page: HtmlPage, metrics: pd.DataFrame, summary: dict | None, concept: str) -> None:
    """A chase's rounds (``--rounds``): how fast each came back, what it cost the other entity
    types, and where each round's new neurons sat (no chase in the summary: no section)."""
    chase = (summary or {}).get("chase")
    if not chase:
        return
    rounds = chase["rounds"]
    asked = (summary or {}).get("config", {}).get("rounds", chase["rounds_run"])
    page.heading("Chasing the concept")
    stopped = chase.get("stopped_early")
    page.paragraph(
        f"Round 1 holds the neurons most salient for {concept} and retrains; every later round "
        "ranks the retrained model's live neurons again, adds the next most salient to the held "
        "set and retrains again. The random arm adds, each round, as many random neurons per "
        f"layer. {chase['rounds_run']} of {asked} rounds ran"
        + (f"; the chase stopped early: {stopped}." if stopped else ".")
        + " The neuron analyses further down (saliency, heatmaps, reappeared, ablated, primed "
        "and polysemantic neurons) describe round 1. "
        + ONE_SEED_SWEEP.format(flags=f"--rounds {asked}")
    )
    _chase_recovery(page, metrics, summary or {}, rounds, concept)
    _one_shot(page, chase.get("one_shot"), concept)
    _chase_collateral(page, summary or {}, rounds, concept)
    _chase_layers(page, rounds, summary or {})


def _one_shot(page: HtmlPage, once: dict | None, concept: str) -> None:
    """The one-shot arm beside the chase's end: the same neurons, removed at once."""
    if not once:
        return
    arm, steps = once["one_shot"], once["retraining_steps"]
    difference = once["one_shot_minus_chase"][concept]
    page.paragraph(
        f"Removing more at once instead: the one-shot arm holds all {once['neurons']} neurons "
        f"of the chase's {once['rounds']} rounds from the base weights at once and retrains one "
        f"round ({steps['one_shot']} steps; the chase retrained {steps['chase']}). Its {concept} "
        f"F1 fell by {arm['drop']:.3f} at the removal and reached {arm['retrained'][concept]:.3f}"
        f" after retraining, against {once['chase_retrained'][concept]:.3f} at the end of the "
        f"chase with the same neurons held: one-shot minus chase {difference:+.3f}. One seed."
    )


def _chase_recovery(
    page: HtmlPage, metrics: pd.DataFrame, summary: dict, rounds: list[dict], concept: str
) -> None:
    go = require("plotly.graph_objects", "the report's plots")
    from neuroplastic.store.rundir import stage_round

    page.paragraph(
        f"Per round: {concept} F1 just before the round's removal (base in round 1, else after "
        f"the previous round), right after it and after its retraining, the retraining steps "
        f"from the round's start until {concept} F1 is back to 90% of its F1 before the removal "
        "(interpolated between evaluations; 'not reached' within the round), the recovery AUC "
        f"(mean of {concept} F1 / its F1 before the removal over the round's steps; 1 = never "
        "lost) and the neurons the round added and held in all. Each round is measured against "
        "the model it removed from: against base, a later round that never falls below 90% of "
        "base would read 0 steps by construction."
    )
    for record in rounds:
        rows = {
            arm: {
                f"{concept} F1 before the removal": _fmt(
                    (entry.get("before") or {}).get(concept), ".3f"
                ),
                f"{concept} F1 after removal": _fmt(entry["removed"].get(concept), ".3f"),
                f"{concept} F1 after retraining": _fmt(entry["retrained"].get(concept), ".3f"),
                "steps to 90% of that": _steps(entry["steps_to_recover"]),
                "recovery AUC": _fmt(entry["recovery_auc"], ".3f"),
                "neurons added": str(entry["added"]),
                "neurons held": str(entry["held"]),
            }
            for arm, entry in record["arms"].items()
        }
        page.table(
            pd.DataFrame(rows).T,
            caption=f"Round {record['round']}: recovery of {concept}, per arm",
            float_format=None,
        )
    column = f"f1_{concept}"
    if metrics.empty or column not in metrics.columns:
        page.paragraph(f"No evaluations recorded: no curve of {concept} F1 per step.")
        return
    rows = metrics[metrics["stage"].map(lambda s: stage_round(str(s)) >= 1)]
    figure = go.Figure()
    for arm, group in rows.groupby("arm", sort=False):
        if arm not in rounds[0]["arms"]:
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
    first = rows[rows["arm"] == rows["arm"].iloc[0]] if len(rows) else rows
    for record in rounds:
        mine = first[first["stage"].map(lambda s: stage_round(str(s))) == record["round"]]
        if len(mine):
            figure.add_vline(
                x=float(mine["step"].min()),
                line={"dash": "dot", "width": 1, "color": "#8c959f"},
                annotation_text=f"round {record['round']}",
                annotation_font={"size": 9, "color": "#57606a"},
            )
    base = _base_scores(summary)
    if base.get(concept):
        figure.add_hline(
            y=RECOVERY_TARGET * base[concept],
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
    page.paragraph(
        f"{concept} F1 against training step over every round, each arm; dotted lines mark "
        "where each round starts (its neurons removed), the dashed line is 90% of the base F1."
    )
    page.plotly(figure, height="360px")


def _base_scores(summary: dict) -> dict[str, float]:
    """The base model's F1 per entity type (the concept arm's ``base`` stage)."""
    stages = summary.get("arms", {}).get("concept", {}).get("stages", [])
    return next((e.get("f1", {}) for e in stages if e.get("stage") == "base"), {})


def _chase_collateral(page: HtmlPage, summary: dict, rounds: list[dict], concept: str) -> None:
    go = require("plotly.graph_objects", "the report's plots")
    from plotly.subplots import make_subplots

    entities = [
        e for e in rounds[0]["arms"]["concept"]["retrained"] if e not in (concept, "overall")
    ]
    if not entities:
        return
    base = _base_scores(summary)
    page.paragraph(
        f"Collateral damage: the F1 of the other entity types after each round's retraining "
        "against the neurons held so far. Holding more neurons costs every type something; what "
        f"the concept arm costs beyond the random arm at the same count is what removing "
        f"{concept}'s neurons costs the other types. Held 0 is the base model."
    )
    rows = [{"round": "base", "arm": "–", "neurons held": "0"}]
    rows[0].update({f"{e} F1": _fmt(base.get(e), ".3f") for e in entities})
    for record in rounds:
        for arm, entry in record["arms"].items():
            row = {"round": str(record["round"]), "arm": arm, "neurons held": str(entry["held"])}
            row.update({f"{e} F1": _fmt(entry["retrained"].get(e), ".3f") for e in entities})
            rows.append(row)
    page.table(
        pd.DataFrame(rows),
        caption="Other entity types' F1 after each round's retraining",
        index=False,
        float_format=None,
    )
    fig = make_subplots(rows=1, cols=len(entities), subplot_titles=entities, shared_yaxes=True)
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
    page.plotly(fig, height="340px")


def _chase_layers(page: HtmlPage, rounds: list[dict], summary: dict) -> None:
    n_layers = summary.get("config", {}).get("n_layers")
    layers = sorted(
        {int(k) for r in rounds for e in r["arms"].values() for k in e["added_per_layer"]}
    )
    layers = list(range(n_layers)) if isinstance(n_layers, int) else layers
    page.paragraph(
        "Where each round's new neurons came from: how many the round added in every layer, "
        "and their mean layer (each neuron counts once). With --baseline random (per layer) "
        "the random arm matches the concept arm's count in every layer, so its row repeats the "
        "concept arm's; with random-global only the total. 'Already salient at base' "
        "(concept arm): the share of the round's new neurons that were already, in the base "
        "model, among the most salient live neurons, as many as the round held in all. A high "
        "share says the round took neurons that carried the concept from the start (a larger "
        "first removal would have caught them); a low share says retraining moved the concept "
        "into neurons that were not about it before."
    )
    rows = []
    for record in rounds:
        for arm, entry in record["arms"].items():
            row: dict[str, Any] = {"round": str(record["round"]), "arm": arm}
            row.update({f"layer {k}": str(entry["added_per_layer"].get(str(k), 0)) for k in layers})
            row["mean layer of the added"] = _fmt(entry["added_mean_layer"], ".2f")
            row["already salient at base"] = (
                _fmt(entry.get("already_salient_at_base"), ".0%") if arm == "concept" else "–"
            )
            rows.append(row)
    page.table(
        pd.DataFrame(rows),
        caption="Neurons added per layer, per round and arm",
        index=False,
        float_format=None,
    )


def _preempt(page: HtmlPage, summary: dict | None, concept: str) -> None:
    """The pre-empting arm against its control, with the concept and random arms beside
    (``--preempt``; none in the summary: no section)."""
    preempt = (summary or {}).get("preempt")
    if not preempt:
        return
    count, predictor = preempt["count"], preempt["predictor"]
    page.heading("Pre-empting the new home")
    page.paragraph(
        f"The preempt arm holds the concept's neurons and, besides them, the {count} surviving "
        f"neurons the {predictor} predictor scored highest at the pruned stage, before any "
        f"retraining. Its control, the preempt-random arm, holds the concept's neurons and "
        f"{count} random survivors, as many in every layer as the preempt arm took there and "
        f"drawn from the same candidates (the survivors {predictor} scored): the two differ only "
        f"in which survivors they hold, so preempt minus control is what the prediction bought. "
        f"{preempt['overlap']} of the {count} random survivors are also among the predicted "
        "ones. Steps to 90%: retraining steps from pruning until "
        f"{concept} F1 is back to 90% of its base value (interpolated; 'not reached' within the "
        f"run); recovery AUC: mean of {concept} F1 / base F1 over the retraining steps. "
        + ONE_SEED_SWEEP.format(flags=f"--preempt {predictor} --preempt-count {count}")
    )
    recovery = preempt["recovery"]
    entities = list(dict.fromkeys(e for data in recovery.values() for e in data["last"]))
    entities.sort(key=lambda e: (e != concept, e))
    rows = {}
    for arm, data in recovery.items():
        row = {
            "steps to 90% of base": _steps(data["steps_to_recover_90"]),
            "recovery AUC": _fmt(data["recovery_auc"], ".3f"),
        }
        for entity in entities:
            row[f"{entity} F1 pruned"] = _fmt(data["pruned"].get(entity), ".3f")
            row[f"{entity} F1 last"] = _fmt(data["last"].get(entity), ".3f")
        rows[arm] = row
    page.table(
        pd.DataFrame(rows).T,
        caption=f"Recovery of {concept} in every arm",
        float_format=None,
    )
    diff = preempt["preempt_minus_control"]
    difference = {
        "steps to 90% of base": _gap_or_missing(
            diff["steps_to_recover_90"], "+.1f", "n/a (not reached in an arm)"
        ),
        "recovery AUC": _gap_or_missing(diff["recovery_auc"], "+.3f"),
        **{f"{e} F1 last": _gap_or_missing(diff["last"].get(e), "+.3f") for e in entities},
    }
    columns = {"preempt - preempt-random": difference}
    oracle = preempt.get("oracle_minus_control")
    if oracle is not None:
        columns["preempt-oracle - preempt-random"] = {
            "steps to 90% of base": _gap_or_missing(
                oracle["steps_to_recover_90"], "+.1f", "n/a (not reached in an arm)"
            ),
            "recovery AUC": _gap_or_missing(oracle["recovery_auc"], "+.3f"),
            **{f"{e} F1 last": _gap_or_missing(oracle["last"].get(e), "+.3f") for e in entities},
        }
    page.table(
        pd.DataFrame(columns),
        caption="Preempt arm minus its control (positive steps, negative AUC or F1: the "
        "prediction slowed the recovery)"
        + (
            ", and the oracle minus the same control: the most any predictor could buy"
            if oracle
            else ""
        ),
        float_format=None,
    )
    if oracle is not None:
        share = preempt.get("share_of_oracle")
        page.paragraph(
            f"The oracle holds the {count} survivors that gained the most saliency in the "
            f"concept arm, which ran first on the same batches: hindsight no predictor read "
            f"before retraining has. {predictor} bought "
            + (
                f"{share:.0%}"
                if share is not None
                else "an undefined share (the oracle bought nothing)"
            )
            + f" of the oracle's recovery-AUC change over random (0%: no better than random "
            f"survivors, 100%: as good as hindsight); {preempt.get('oracle_overlap', 0)} of its "
            f"{count} neurons are among the oracle's. One seed: the spread is the sweep's."
        )


def _gap_or_missing(value: Any, spec: str, missing: str = "–") -> str:
    return missing if value is None or not math.isfinite(value) else format(value, spec)


def _saliency(page: HtmlPage, analyses: dict[str, ArmAnalysis], n_top: int) -> None:
    go = require("plotly.graph_objects", "the report's plots")
    from plotly.subplots import make_subplots

    page.heading("Saliency per layer")
    page.paragraph(
        "Left: mean saliency of each layer's live neurons, per stage (ablated neurons have no "
        "saliency and are left out; hover for how many were alive). With no concept at all, "
        f"every layer would sit near 0.5. Right: which layers hold the top {n_top} most salient "
        "neurons of one fixed population per arm (alive at every stage, outside the arm's "
        "removed set), so that every stage's top set is drawn from the same neurons. Below: the "
        "saliency-weighted mean layer of those top neurons (solid), and of each stage's own top "
        "set among all live neurons (dotted). Between base and pruned nothing is trained: the "
        "dotted line's step there is what removing the top tier does to 'the top neurons' by "
        "itself, not movement. Does the concept move to earlier layers while retraining, as Lo "
        "et al. report? Read the solid line from pruned on, against the random arm; whether a "
        "shift exceeds the spread between seeds is for `neuroplastic sweep` to say."
    )
    arms = list(analyses)
    fig = make_subplots(
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
    page.plotly(fig)

    depth = go.Figure()
    n_layers = analyses[arms[0]].run.stages[analyses[arms[0]].run.first].ranking.n_layers
    lines = (
        ("mean_layer_fixed", "fixed population", {}),
        ("mean_layer", "each stage's own top set", {"dash": "dot", "width": 1}),
    )
    for arm in arms:
        frame = analyses[arm].depth
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
    page.plotly(depth, height="330px")
    with page.details("Saliency per layer, as a table"):
        for arm in arms:
            page.table(analyses[arm].layer_saliency, caption=f"{arm} arm", index=False)
            page.table(analyses[arm].depth, caption=f"{arm} arm: depth of the concept", index=False)


def _heatmaps(page: HtmlPage, analyses: dict[str, ArmAnalysis]) -> None:
    go = require("plotly.graph_objects", "the report's plots")
    from plotly.subplots import make_subplots

    page.heading("Saliency of every neuron")
    page.paragraph(
        "One row per layer, one column per neuron, one panel per stage; the random arm on the "
        "right. Within a layer, neurons are sorted by their saliency at the first stage (hover "
        "for the neuron's index), so the first panel is a smooth gradient and later panels show "
        "which neurons lost or gained the concept. Ablated (dead) neurons have no saliency: "
        "they are drawn grey (masked), not as 0."
    )
    arms = list(analyses)
    stages = list(dict.fromkeys(s for a in arms for s in analyses[a].run.stage_names))
    fig = make_subplots(
        rows=len(stages),
        cols=len(arms),
        shared_xaxes=True,
        column_titles=[f"{arm} arm" for arm in arms],
        row_titles=stages,
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
        height=max(300, 95 * len(stages) + 80),
        plot_bgcolor=DEAD_COLOR,  # NaN cells (dead neurons) are gaps: the background shows
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0,
            "cmax": 1,
            "colorbar": {"title": {"text": "saliency"}, "len": 0.6},
        },
        margin={"t": 40, "b": 20, "l": 40, "r": 90},
    )
    page.plotly(fig, height=f"{max(300, 95 * len(stages) + 80)}px")


def _tokens(tokens: Sequence[str], n: int = 8) -> str:
    return " · ".join(str(t).strip() or repr(t) for t in list(tokens)[:n])


def _stored_activations(
    run: RunDir,
) -> Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]]:
    """``(arm, stage) ->`` the whole-sentence activations the run stored for its neuron views,
    read once each; a file that cannot be read gives none (its views show the top tokens only,
    and say so)."""
    cache: dict[tuple[str, str], Mapping[tuple[int, int, int], np.ndarray]] = {}

    def stored(arm: str, stage: str) -> Mapping[tuple[int, int, int], np.ndarray]:
        if (arm, stage) not in cache:
            try:
                cache[arm, stage] = run.sentence_activations(arm, stage)
            except CorruptFile:
                cache[arm, stage] = {}
        return cache[arm, stage]

    return stored


def _before_after(
    page: HtmlPage,
    data: ArmRun,
    sentences: list[list[str]],
    layer: int,
    neuron: int,
    summary: str,
    stored: Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]] | None = None,
) -> None:
    """One neuron's view at the arm's first and last stage; ``stored(arm, stage)``: the
    whole-sentence activations the run stored for its views (every token coloured)."""
    with page.details(summary):
        if not sentences:
            page.paragraph("No sentences stored in the run directory (sentences.json).")
            return
        columns = [
            examples_from_top_k(
                data.stages[stage].top_tokens, sentences, layer, neuron,
                activations=stored(data.arm, stage) if stored is not None else None,
            )
            for stage in (data.first, data.last)
        ]  # fmt: skip
        add_side_by_side(
            page,
            columns,
            [f"L{layer}:N{neuron} at {data.first}", f"L{layer}:N{neuron} at {data.last}"],
        )


def _reappeared(
    page: HtmlPage,
    analyses: dict[str, ArmAnalysis],
    sentences: list[list[str]],
    n_views: int,
    similarity_note: str,
    stored: Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]] | None = None,
) -> None:
    page.heading("Where the concept reappeared")
    page.paragraph(
        "The neurons outside the ablated set that gained most saliency from the pruned stage to "
        "the last, with their top activating tokens before pruning and at the end. "
        + similarity_note
    )
    for i, (arm, analysis) in enumerate(analyses.items()):
        data, frame = analysis.run, analysis.reappearance
        table = pd.DataFrame(
            {
                "neuron": [
                    f"L{a}:N{b}" for a, b in zip(frame["layer"], frame["neuron"], strict=True)
                ],
                f"saliency {data.start}": frame["saliency_start"],
                f"saliency {data.last}": frame["saliency_end"],
                "gain": frame["gain"],
                f"{analysis.run.concept} share before": frame["concept_share_base"],
                f"{analysis.run.concept} share after": frame["concept_share_end"],
                "similarity before/after": frame["similarity"],
                f"top tokens at {data.first}": frame["tokens_base"].map(_tokens),
                f"top tokens at {data.last}": frame["tokens_end"].map(_tokens),
            }
        )
        with page.details(f"{arm} arm: {len(table)} neurons", open=i == 0):
            page.table(table, index=False, float_format="{:.3f}")
            for row in frame.head(n_views).itertuples(index=False):
                _before_after(
                    page,
                    data,
                    sentences,
                    int(row.layer),
                    int(row.neuron),
                    f"L{row.layer}:N{row.neuron}: saliency {row.saliency_start:.2f} → "
                    f"{row.saliency_end:.2f}; now {_tokens(row.tokens_end, 5)}",
                    stored,
                )


def _pruned(page: HtmlPage, analyses: dict[str, ArmAnalysis], config: dict[str, Any]) -> None:
    page.heading("The ablated neurons")
    page.paragraph(
        "The ablated neurons at every stage: how many are alive, and for those alive their mean "
        "saliency and how similar their top tokens are to their own top tokens before pruning. "
        "In hold mode they stay dead (activation 0: no saliency, no similarity, '–'); in "
        "regrow mode they may come back, with the old meaning or a new one. This run: "
        f"{config['mode']} mode."
    )
    rows = []
    for arm, analysis in analyses.items():
        for r in analysis.pruned.stages.itertuples(index=False):
            rows.append(
                {
                    "arm": arm,
                    "stage": r.stage,
                    "alive": f"{r.n_alive} of {r.n}",
                    "mean saliency (alive)": _fmt(r.saliency_mean, ".3f"),
                    "mean similarity to own base tokens (alive)": _fmt(r.similarity_mean, ".3f"),
                    f"{analysis.run.concept} share of top tokens (alive)": _fmt(
                        r.concept_share_mean, ".0%"
                    ),
                }
            )
    page.table(pd.DataFrame(rows), index=False)


def _primed(page: HtmlPage, analyses: dict[str, ArmAnalysis], similarity_note: str) -> None:
    go = require("plotly.graph_objects", "the report's plots")
    from plotly.subplots import make_subplots

    page.heading("Primed neurons")
    primed = {arm: a.primed for arm, a in analyses.items() if a.primed is not None}
    if not primed:
        page.paragraph("Not computed: " + similarity_note)
        return
    first = next(iter(primed.values()))
    page.paragraph(
        "Does a neuron's similarity to the concept before pruning (its top tokens against the "
        "tokens labelled with the concept) predict how much saliency it gains from "
        f"{first.start} to {first.end}? Spearman's ρ over the neurons outside the ablated set "
        "that are alive at every stage compared: a description of this run, not a test (no "
        "p-value or interval is computed over neurons; seeds give the spread). A positive ρ in "
        "the concept arm says the concept came back in neurons already near it. Neurons already "
        "salient at the start have little room to gain, so the second row of each arm keeps "
        "only those with saliency below 0.5 there. The gain is measured from the saliency at "
        "the start, and similarity goes with that saliency too, so part of ρ is mechanical; "
        "the partial ρ of similarity with the saliency at the end, given the saliency at the "
        "start, takes that part out. " + similarity_note
    )
    rows = []
    for arm, analysis in analyses.items():
        for neurons, p in (
            ("all", analysis.primed),
            ("saliency < 0.5 at start", analysis.primed_unsalient),
        ):
            if p is not None:
                rows.append(
                    {
                        "arm": arm,
                        "neurons": neurons,
                        "rho": p.rho,
                        "rho with saliency at start": p.rho_with_start,
                        "partial rho given start": p.partial_rho,
                        "n": p.n,
                    }
                )
    page.table(pd.DataFrame(rows), index=False, float_format="{:+.3f}")
    titles = [f"{arm} arm: ρ = {p.rho:+.2f}" for arm, p in primed.items()]
    fig = make_subplots(rows=1, cols=len(primed), shared_yaxes=True, subplot_titles=titles)
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
    page.plotly(fig, height="360px")


def _prediction(page: HtmlPage, summary: dict | None, concept: str) -> None:
    """Each predictor against each ground truth, as the run's summary recorded them (a run
    made before predictions existed has none: no section)."""
    rows = (summary or {}).get("prediction")
    if not rows:
        return
    page.heading("Predicting the new home")
    page.paragraph(
        f"At the pruned stage, before any retraining, every surviving neuron of the concept arm "
        f"was scored by each predictor below; once retraining was done, the scores were checked "
        f"against the neurons that took {concept} over. ROC AUC: the chance that such a neuron "
        "scores above one that did not (chance: 0.5). Precision at k: the share of them among "
        "the k best-scored neurons, k their number (chance: their share of all candidates, the "
        "base rate). Candidates are the neurons outside the removed set alive at both stages. "
        "This is one seed's description, not an estimate: a handful of positive neurons makes "
        "these numbers coarse, and their spread comes from seeds (`neuroplastic sweep`). The "
        "probe sentences are split in two halves by a seeded hash: the predictors read one, "
        "the ground truths the other, so no predictor shares a truth's sampling noise."
    )
    frame = pd.DataFrame(rows)
    _causal_table(page, (summary or {}).get("causal") or {}, concept)
    with page.details("What each predictor and ground truth is"):
        names = [*frame["predictor"].unique(), *TRUTHS]
        page.table(
            pd.DataFrame({"meaning": [DESCRIPTIONS.get(n, "") for n in names]}, index=names),
            float_format=None,
        )
    for (arm, truth), group in frame.groupby(["arm", "truth"], sort=False):
        first = group.iloc[0]
        n_positive, n_candidates = int(first["n_positive"]), int(first["n_candidates"])
        what = f"{arm} arm, truth '{truth}' ({DESCRIPTIONS.get(truth, truth)})"
        if n_positive == 0:
            page.paragraph(f"{what}: no neuron qualified, so no predictor can be scored.")
            continue
        table = pd.DataFrame(
            {
                "predictor": group["predictor"],
                "ROC AUC": group["auc"].map(lambda v: _fmt(v, ".3f")),
                f"precision at {int(first['k'])}": group["precision_at_k"].map(
                    lambda v: _fmt(v, ".3f")
                ),
                "unscored": group["n_unscored"] if "n_unscored" in group else 0,
            }
        )
        page.table(
            table,
            caption=f"{what}: {n_positive} of {n_candidates} candidates; chance: AUC 0.5, "
            f"precision {first['base_rate']:.3f}",
            index=False,
            float_format=None,
        )


def _causal_table(page: HtmlPage, causal: dict[str, Any], concept: str) -> None:
    """What ablating each predictor's picks costs the retrained model
    (neuroplastic.analysis.causal)."""
    for arm, record in causal.items():
        ner = record["task"] == "ner"
        what = f"{concept} F1 lost" if ner else f"{concept} next-token loss gained"
        score = f"{concept} F1 {record['score']:.3f}" if ner else f"loss {record['score']:.3f}"
        floor = record["lost"].get("matched_random")
        table = pd.DataFrame(
            {
                "set ablated": list(record["lost"]),
                what: [_fmt(v, "+.3f") for v in record["lost"].values()],
                "beyond random survivors": [
                    _fmt(None if v is None or floor is None else v - floor, "+.3f")
                    for v in record["lost"].values()
                ],
            }
        )
        others = record.get("others_lost")
        if others:  # is the set the concept's, or one every type leans on?
            table["other types' F1 lost, mean"] = [
                _fmt(float(np.mean(list(others[n].values()))) if others.get(n) else None, "+.3f")
                for n in record["lost"]
            ]
        page.table(
            table,
            caption=f"Causal truth, {arm} arm: in the retrained model ({score}, its removal "
            f"held), {record['k']} more surviving neurons ablated at a time: each predictor's "
            "best-scored, the realised top gainers (hindsight), the last stage's most salient, "
            "and random survivors with the gainers' count per layer (the floor). Scored on the "
            "validation sentences, which neither predictors nor rankings read; one seed",
            index=False,
            float_format=None,
        )


def _polysemantic(
    page: HtmlPage,
    analyses: dict[str, ArmAnalysis],
    sentences: list[list[str]],
    n_neurons: int,
    n_views: int,
    stored: Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]] | None = None,
) -> None:
    page.heading("Polysemantic neurons")
    any_analysis = next(iter(analyses.values()))
    poly = any_analysis.polysemanticity
    page.paragraph(
        f"A neuron is {poly.definition()}. 'Newly polysemantic' ones were not at the first "
        "stage; demo 03 shows the ones mixed with another entity type. Every "
        "stage of every arm is counted over one population, the "
        f"{poly.n_population} neurons alive at every stage of every arm and outside every "
        "arm's removed set, so a change in the count is a change of behaviour, not of the "
        "denominator, and the control arm's count (churn from retraining alone) is the "
        "yardstick for the concept arm's."
    )
    frames = []
    for arm, analysis in analyses.items():
        frame = analysis.polysemanticity.counts.copy()
        frame.insert(0, "arm", arm)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True).rename(columns=poly.HEADERS)
    page.table(table, index=False, float_format="{:.3f}")
    for i, (arm, analysis) in enumerate(analyses.items()):
        data = analysis.run
        examples = analysis.polysemanticity.examples(data.last, n_neurons)
        with page.details(
            f"{arm} arm: polysemantic neurons at {data.last} ({len(examples)} shown)", open=i == 0
        ):
            if examples.empty:
                page.paragraph("None.")
                continue
            page.table(
                pd.DataFrame(
                    {
                        "neuron": [
                            f"L{a}:N{b}"
                            for a, b in zip(examples["layer"], examples["neuron"], strict=True)
                        ],
                        f"{poly.concept} share": examples["concept_share"],
                        "mixed with": examples["mixed_with"],
                        "labels of its top tokens": examples["labels"].map(
                            lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
                        ),
                        "newly polysemantic": examples["new"],
                        "top tokens": examples["tokens"].map(_tokens),
                    }
                ),
                index=False,
                float_format="{:.2f}",
            )
            for row in examples.head(n_views).itertuples(index=False):
                _before_after(
                    page,
                    data,
                    sentences,
                    int(row.layer),
                    int(row.neuron),
                    f"L{row.layer}:N{row.neuron}: {row.concept_share:.0%} "
                    f"{poly.concept}, mixed with {row.mixed_with}"
                    f"{' (newly polysemantic)' if row.new else ''}; "
                    f"{_tokens(row.tokens, 5)}",
                    stored,
                )


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)
