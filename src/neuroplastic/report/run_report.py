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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from neuroplastic.analysis.arm_analysis import ArmAnalysis, analyse_arm
from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.polysemantic import common_population, control_pair_population
from neuroplastic.analysis.scores import recovery_curves, stage_gaps
from neuroplastic.config import (
    CONCEPT_ARM,
    PREEMPT_ARM,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RANDOM_ARM,
    RECOVERY_TARGET,
    ExperimentConfig,
)
from neuroplastic.core.neurons import CONTROL_KINDS
from neuroplastic.core.pretrained import model_note
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.chase import rounds_run
from neuroplastic.report import figures
from neuroplastic.report.chase_sections import chase_section, preempt_section
from neuroplastic.report.html import HtmlPage
from neuroplastic.report.neurons_sections import (
    heatmaps_section,
    polysemantic_section,
    prediction_section,
    primed_section,
    pruned_section,
    reappeared_section,
    saliency_section,
    stored_activations_section,
)
from neuroplastic.report.relearning import relearning
from neuroplastic.report.style import fmt, steps_text
from neuroplastic.run_format import FIXED_SUFFIX, HEAD_READING
from neuroplastic.store.checkpoint import Checkpointer, check_stages_match_config
from neuroplastic.store.lock import reading
from neuroplastic.store.manifest import CorruptFile
from neuroplastic.store.rundir import RunDir
from neuroplastic.store.summary import Summary

__all__ = ["build_report", "run_warnings", "write_report"]

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
    check_stages_match_config(run)  # as a resumption checks it
    arms = [arm for arm in run.arms() if run.stages(arm)]
    if not arms:
        raise NeuroplasticError(f"{run.path}: no arm has stage artifacts yet; nothing to report")
    # An interrupted run: an arm at its base alone has nothing to compare yet.
    at_base = [arm for arm in arms if len(run.stages(arm)) < 2]
    arms = [arm for arm in arms if arm not in at_base]
    finish = f"rerun `neuroplastic run --out {run.path}` to finish it"
    if not arms:
        raise NeuroplasticError(
            f"{run.path}: no arm is past its base stage yet, nothing to compare; {finish}"
        )
    warnings = [
        f"The {arm} arm has only its base stage so far and is left out; {finish}."
        for arm in at_base
    ] + run_warnings(run)
    loaded = {arm: ArmRun.load(run, arm) for arm in arms}
    some = next(iter(loaded.values()))
    n_total = some.stages[some.first].ranking.scores.numel()
    # A fraction of a small model can be a handful of neurons: take at least 10.
    n_top = max(min(10, n_total), round(top * n_total)) if isinstance(top, float) else int(top)
    embeddings, similarity_note = _embeddings(run, loaded, similarity)
    # Polysemantic neurons are counted over one population common to every arm, so that the
    # control's churn is counted on the same neurons as the concept arm's.
    common = common_population(loaded)
    pair = control_pair_population(loaded)  # primed: an arm and its control on one population
    analyses = {
        arm: analyse_arm(
            data,
            embeddings,
            top=n_top,
            n_reappeared=n_neurons,
            population=common,
            primed_population=pair,
        )
        for arm, data in loaded.items()
    }
    summary = Summary.read(run) if run.summary_path.is_file() else None
    metrics = run.metrics() if run.metrics_path.is_file() else pd.DataFrame()
    sentences = run.sentences() if run.sentences_path.is_file() else []

    concept = config["concept"]
    page = HtmlPage(f"Where did {concept} go? {config['model']}")
    if note := model_note(str(config.get("model"))):
        page.paragraph(note)
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
    chase_section(page, metrics, summary, concept)
    preempt_section(page, summary, concept)
    relearning(page, metrics, summary, concept)
    _readable(page, summary, concept)
    saliency_section(page, analyses, n_top)
    heatmaps_section(page, analyses)
    stored = stored_activations_section(run)
    reappeared_section(page, analyses, sentences, n_views, similarity_note, stored)
    pruned_section(page, analyses, config)
    primed_section(page, analyses, similarity_note)
    prediction_section(page, summary, concept)
    polysemantic_section(page, analyses, sentences, n_neurons, n_views, stored)
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
    "hook points (not matched in removed variance: it removes about rank / d_model of it)",
    "matched-projection": "a random orthogonal projection of the erasure's rank at the same "
    "hook points, removing the same share of each layer's variance as the erasure",
}


def _key_numbers(
    page: HtmlPage,
    analyses: dict[str, ArmAnalysis],
    summary: Summary | None,
    concept: str,
    n_top: int,
) -> None:
    page.heading("Key numbers")
    page.paragraph("Base model: " + _base_training(summary.base if summary else None))
    if summary is None:
        page.paragraph("No summary.json: scores per stage not recorded.")
    else:
        _stage_table(page, stage_gaps(summary.arms), concept)
    arms_summary = summary.arms if summary else {}
    rows: dict[str, dict[str, str]] = {}
    for arm, analysis in analyses.items():
        column: dict[str, str] = {}
        data = analysis.run
        recorded = arms_summary.get(arm)
        removal = recorded.removal if recorded else None
        if removal is not None:  # --removal leace|direction: no neuron is ablated
            column["removal"] = removal["what"]
        else:
            column["neurons ablated"] = str(len(data.ablated))
        if len(analyses) > 1 and removal is None:
            overlap = recorded.overlap_with_concept if recorded else None
            column["of them also in the concept set"] = (
                "–" if arm == CONCEPT_ARM else NOT_RECORDED if overlap is None else str(overlap)
            )
        if arm == RANDOM_ARM:
            kind = recorded.control if recorded else None
            column["the control is"] = NOT_RECORDED if kind is None else REPORTED_CONTROLS[kind]
        recovered = recorded.recovery if recorded else None
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
    others = [arm for arm in rows if arm not in (CONCEPT_ARM, RANDOM_ARM)]
    page.table(
        pd.DataFrame(rows).fillna("–"),
        caption="Concept arm beside the random arm"
        + (f" and the {' and '.join(others)} arms" if others else ""),
    )


def _control_sentence(config: dict[str, Any], summary: Summary | None) -> str:
    """What the control arm holds, as the run drew it."""
    if config.get("baseline") == "none":
        return "There is no control arm."
    random = summary.arms.get(RANDOM_ARM) if summary else None
    kind = random.control if random else None
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
    target = f"{RECOVERY_TARGET:.0%} of base"
    numbers = {
        f"first crossing of {target}, steps (evaluated at steps {_grid_text(grid)})": (
            steps_text(steps) if recovered.get("reached") else f"not within {budget:g} (censored)"
        )
    }
    if "lasting" in recovered:  # (older runs have the first crossing only)
        lasting = recovered.get("steps_to_lasting_recovery")
        numbers[f"lasting recovery: steps after which it stays at or above {target}"] = (
            steps_text(lasting) if recovered["lasting"] else f"not by step {budget:g} (censored)"
        )
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
    arm = gaps[gaps["arm"] == CONCEPT_ARM]
    control = gaps[gaps["arm"] == RANDOM_ARM].set_index(["stage", "entity"])["value"]
    rows = []
    for stage, group in arm.groupby("stage", sort=False):
        by_entity = group.set_index("entity")
        row: dict[str, Any] = {"stage": stage, "step": int(group["step"].iloc[0])}
        for entity in (main, other):
            if entity not in by_entity.index:
                continue
            entry = by_entity.loc[entity]
            row[f"{entity} {name}"] = fmt(entry["value"], ".3f")
            row[f"{entity} gap to base"] = _gap(entry["gap_to_base"])
            if not control.empty:
                row[f"random arm {entity} {name}"] = fmt(control.get((stage, entity)), ".3f")
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


def _recovery(page: HtmlPage, metrics: pd.DataFrame, summary: Summary | None, concept: str) -> None:
    page.heading("Recovery")
    metric = _metrics_metric(metrics)
    if metric is None:
        page.paragraph("No evaluations recorded (metrics.jsonl is missing or empty).")
    else:
        curves = recovery_curves(metrics, metric=metric)
        name, main, other = _score_names(metric, concept)
        fig = figures.recovery_grid(
            curves, concept=concept, main=main, other=other, score=name, metric=metric
        )
        page.paragraph(
            ("Entity F1" if metric == "f1" else "Language-modelling loss on tokens of each label")
            + " against retraining step (step 0 holds the base model and, below it, the model "
            "right after pruning), concept arm (red, drawn on top) and random arm (blue, "
            "dashed)"
            + (
                ", preempt arm (purple) and its control, the preempt-random arm (grey)"
                if PREEMPT_ARM in set(curves["arm"])
                else ""
            )
            + (
                ", the oracle, the preempt-oracle arm (green)"
                if PREEMPT_ORACLE_ARM in set(curves["arm"])
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
        gaps = stage_gaps(summary.arms)
        name = _score_names(gaps.attrs["metric"], concept)[0]
        with page.details(f"{name} of every entity type at the end of every stage"):
            page.table(
                _gap_table(gaps, name),
                caption="gap to base: score - base score; gap to control: concept arm - random "
                "arm at the same stage"
                + (
                    "; preempt arm gap to control: preempt arm - preempt-random arm"
                    if PREEMPT_ARM in set(gaps["arm"])
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
            row[f"{arm} arm {name}"] = fmt(by_arm.loc[arm, "value"], ".3f")
            row[f"{arm} arm gap to base"] = _gap(by_arm.loc[arm, "gap_to_base"])
        if CONCEPT_ARM in by_arm.index and len(by_arm) > 1:
            row["gap to control"] = _gap(by_arm.loc[CONCEPT_ARM, "gap_to_control"])
        if PREEMPT_ARM in by_arm.index and PREEMPT_RANDOM_ARM in by_arm.index:
            row[f"{PREEMPT_ARM} arm gap to control"] = _gap(
                by_arm.loc[PREEMPT_ARM, "gap_to_control"]
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _seen_in_train(page: HtmlPage, summary: Summary | None) -> None:
    data = (summary.data if summary else None) or {}
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
            row[f"{split} share seen"] = fmt(entry["share"], ".1%")
        rows.append(row)
    page.table(
        pd.DataFrame(rows).fillna("–"),
        caption="Mentions seen in training, per entity type",
        index=False,
    )


def _readable(page: HtmlPage, summary: Summary | None, concept: str) -> None:
    """Per arm, the layer x stage tables of where the concept is linearly readable: sign-free
    readability at the residual stream and the MLP output (older runs: the raw AUC)."""
    arms = {
        arm: [e for e in data.stages if e.readable]
        for arm, data in (summary.arms if summary else {}).items()
    }
    arms = {arm: entries for arm, entries in arms.items() if entries}
    if not arms:
        return
    page.heading(f"Where {concept} is linearly readable")
    if not all(e.probes for entries in arms.values() for e in entries):
        _readable_older(page, arms, concept)
        return
    split = next(iter(arms.values()))[0].probes["split"]
    page.paragraph(
        f"Per layer and stage, with the arm's removal in place: a logistic-regression probe for "
        f"{concept} (its tokens against all others), fitted on one half of the validation "
        f"sentences ({split['n_fit']}) and scored on the other ({split['n_score']}): never on "
        "the probe sentences the ranking and any eraser were fitted on, where an eraser "
        "equalised the class means and a probe reads chance by construction. The figure is "
        "the sign-free readability, max(AUC, 1 - AUC) (0.5: not readable; 1: perfectly); "
        "'flipped' marks a raw AUC below 0.5 (readable, the sign reversed), 'chance' a layer "
        "whose raw AUC's 95% interval (clustered by sentence) holds 0.5, the only place "
        "the concept is called unreadable. Two points per layer: the residual stream after "
        "block l, and what block l's MLP writes to it. A probe fitted anew at each stage asks "
        "whether the concept is readable anywhere in the layer: after a removal of neurons it "
        "can stay at its ceiling (the concept still there, disconnected from the head, not "
        "removed). The base stage's probe, held fixed and scored at every later stage, asks "
        "whether the concept is still where the base model wrote it: that reading can fall "
        "where the first cannot. Its tables give the raw AUC, as the base fixed its sign. The "
        "head's own score, nothing fitted, asks whether the head still ranks the concept's "
        "tokens above the others whatever its decisions (raw AUC too). One run, one seed."
    )
    for arm, entries in arms.items():
        for point, what in PROBE_POINTS.items():
            held = point in HELD_POINTS
            layers = sorted({int(k) for e in entries for k in e.probes.get(point, {})})
            if not layers:
                continue
            table = pd.DataFrame(
                {
                    e.stage: [_reading_text(e.probes[point].get(str(n)), held) for n in layers]
                    for e in entries
                },
                index=pd.Index([f"layer {n}" for n in layers], name="layer"),
            )
            figure = "raw probe AUC" if held else "sign-free probe readability"
            page.table(table, caption=f"{arm} arm: {figure} at {what}", index=True)


#: where the probes read, as the report names them
PROBE_POINTS = {
    "resid_post": "the residual stream (blocks.{l}.hook_resid_post)",
    "mlp_out": "the MLP output (blocks.{l}.hook_mlp_out)",
    "resid_post_fixed": "the residual stream, the base's probe held fixed",
    "mlp_out_fixed": "the MLP output, the base's probe held fixed",
    HEAD_READING: (
        "the tagging head's own score (log-odds of the concept's tags), read off the last layer"
    ),
}
#: readings whose sign is known (the base's probe held fixed; the head's own score), so the raw
#: AUC is shown: a fall toward 0.5 is what they measure, and the sign-free figure would lean
#: above it
HELD_POINTS = frozenset(p for p in PROBE_POINTS if p.endswith(FIXED_SUFFIX) or p == HEAD_READING)


def _reading_text(reading: dict[str, float] | None, raw: bool = False) -> str:
    """A probe reading as the report shows it: its sign-free readability, marked (``raw``: the
    raw AUC of a probe held fixed, marked at chance only)."""
    if not reading:
        return "–"
    text = f"{reading['auc' if raw else 'sign_free']:.3f}"
    if reading["low"] <= 0.5 <= reading["high"]:
        return text + " (chance)"
    return text + (" (flipped)" if reading["auc"] < 0.5 and not raw else "")


def _readable_older(page: HtmlPage, arms: dict[str, list], concept: str) -> None:
    """A run made before the probes were fitted apart from the eraser's sentences."""
    page.paragraph(
        f"Per layer (the residual stream after block l) and stage: the AUC on the validation "
        f"tokens of a logistic-regression probe for {concept} (its tokens against all others) "
        "trained on the probe sentences, with the arm's removal in place. This run predates "
        "the probes fitted apart from those sentences: after an erasure fitted on them, the "
        "probe was fitted where the eraser equalised the class means, so an AUC near 0.5 is "
        "built in, and an AUC below 0.5 is readable with the sign flipped. Raw AUCs, no "
        "interval. One run, one seed."
    )
    for arm, entries in arms.items():
        layers = sorted({int(k) for e in entries for k in e.readable})
        table = pd.DataFrame(
            {e.stage: [e.readable.get(str(layer)) for layer in layers] for e in entries},
            index=pd.Index([f"layer {layer}" for layer in layers], name="layer"),
        )
        page.table(
            table, caption=f"{arm} arm: probe AUC per layer and stage", float_format="{:.3f}"
        )


def _headline(page: HtmlPage, metrics: pd.DataFrame, concept: str) -> None:
    """The one figure the page leads with: the concept's recovery beside its control's."""
    metric = _metrics_metric(metrics)
    if metric is None:
        return
    name, main, _ = _score_names(metric, concept)
    curves = recovery_curves(metrics, metric=metric)
    curves = curves[(curves["entity"] == main) & curves["arm"].isin([CONCEPT_ARM, RANDOM_ARM])]
    if curves.empty:
        return
    fig = figures.headline(curves, main=main, score=name, metric=metric)
    controlled = set(curves["arm"]) >= {CONCEPT_ARM, RANDOM_ARM}
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
