"""``DIR/report.html`` of a sweep: every measure as a mean with a 95% interval across seeds.

Read from ``sweep.json`` only. Each cell (mode x method) gets the concept arm beside the random
arm and their paired difference, the F1 of every entity type at every stage, the recovery
curves of every seed with their mean, and how well each predictor named, before retraining,
the neurons that took the concept over (mean AUC and precision across seeds, with intervals),
and, where the runs had them, every round of a chase (``--rounds``) and the pre-empting arm
against its control (``--preempt``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from neuroplastic.analysis.intervals import as_text, number_text
from neuroplastic.analysis.predictor_labels import DESCRIPTIONS
from neuroplastic.config import (
    CONCEPT_ARM,
    NAIVE_ARM,
    PREEMPT_ARM,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RANDOM_ARM,
    RECOVERY_TARGET,
)
from neuroplastic.core.pretrained import model_note
from neuroplastic.errors import NeuroplasticError
from neuroplastic.report import sweep_figures
from neuroplastic.report.html import HtmlPage
from neuroplastic.run_format import FIXED_SUFFIX, HEAD_READING

#: what every sweep.json has (:func:`neuroplastic.experiment.sweep.run_sweep`)
SWEEP_KEYS = ("config", "seeds", "modes", "methods", "measures", "cells")


def write_sweep_report(sweep_dir: str | Path) -> Path:
    path = Path(sweep_dir) / "sweep.json"
    rerun = (
        f"rerun the `neuroplastic sweep --out {sweep_dir} --seeds ...` command that made its runs, "
        "with the same settings (finished runs are skipped; add --only-finished to aggregate "
        "only those already done)"
    )
    if not path.is_file():
        raise NeuroplasticError(f"{path} not found: the sweep has not aggregated its runs; {rerun}")
    try:
        sweep = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NeuroplasticError(f"{path} is corrupt or truncated ({error}); {rerun}") from None
    missing = [key for key in SWEEP_KEYS if not isinstance(sweep, dict) or key not in sweep]
    if missing:
        raise NeuroplasticError(
            f"{path} is not a sweep's summary (no {', '.join(missing)}); {rerun}"
        )
    return build_sweep_report(sweep).write(Path(sweep_dir) / "report.html")


def build_sweep_report(sweep: dict[str, Any]) -> HtmlPage:
    config = sweep["config"]
    concept = config["concept"]
    seeds = sweep["seeds"]
    page = HtmlPage(f"Does {concept} stay removed? {config['model']}, seeds {seeds}")
    if note := model_note(str(config.get("model"))):
        page.paragraph(note)
    for cell, seeds_missing in (sweep.get("incomplete") or {}).items():
        page.raw(
            f'<p class="np-warning">Incomplete: {html.escape(cell)} lacks seeds '
            f"{seeds_missing} (aggregated with --only-finished while the sweep was unfinished); "
            "its intervals are over the seeds it has.</p>"
        )
    head = "the head's initialisation, " if config.get("task", "ner") == "ner" else ""
    page.paragraph(
        f"{len(seeds)} seeds per cell. A seed changes {head}the data order, "
        "dropout, the sentences sampled and the random control's neurons; everything else is "
        "fixed. Every number is a mean across seeds with a 95% t-interval across seeds "
        f"(n = {len(seeds)}; seeds are the unit of replication). 'concept - random' is the "
        "paired difference: the two arms of a seed share batches, dropout and schedule."
    )
    with page.details("What each measure means", open=True):
        page.table(pd.Series(sweep["measures"], name="meaning").to_frame(), float_format=None)
    page.paragraph(
        "Intervals: 95% t-intervals across seeds; for a bounded measure whose t-interval would "
        "leave its range, the range of the seeds instead (marked; with n seeds it holds the "
        "median with probability 1 - 2^(1-n)). A measure that some seeds never reached within "
        "their steps (censored) shows a bound on its mean, never a mean over the seeds that "
        "reached it: a lower bound, or an upper bound for a difference whose control never got "
        "there; 'undetermined' where seeds are censored both ways. A paired difference is "
        "called 'within ±m' only when two one-sided t-tests (TOST, alpha 0.05) show it inside "
        "the margin m; otherwise the text says how "
        "large a difference the 90% interval still admits, and '80% power detects ±d' the "
        "smallest true difference these seeds would find four times in five. Margins: "
        + ", ".join(f"{m} {number_text(v)}" for m, v in (sweep.get("margins") or {}).items())
        + "."
    )
    _overview(page, sweep)
    for cell, result in sweep["cells"].items():
        page.heading(cell)
        _design(page, result)
        _measures(page, sweep["measures"], result)
        _stage_scores(page, result)
        _readable(page, result, concept)
        _curves(page, result, concept)
        _prediction(page, result, concept)
        _causal(page, result, concept)
        _chase(page, sweep.get("chase_measures", {}), result, concept)
        _preempt(page, sweep.get("preempt_measures", {}), result, concept)
        _savings(page, sweep.get("savings_measures", {}), result, concept)
    _grid(page, sweep, concept)
    page.heading("Configuration")
    with page.details("base config (mode, method and seed vary per cell)"):
        page.preformatted(json.dumps(config, indent=2, sort_keys=True))
    return page


def _overview(page: HtmlPage, sweep: dict[str, Any]) -> None:
    """Every cell side by side (hold beside regrow, method beside method), concept arm and its
    paired difference from the random arm."""
    page.heading("All cells")
    columns = {}
    for cell, result in sweep["cells"].items():
        columns[f"{cell}: concept"] = result["arms"][CONCEPT_ARM]
        if "concept_minus_random" in result:
            columns[f"{cell}: concept - random"] = result["concept_minus_random"]
    table = pd.DataFrame(
        {
            name: {m: as_text(values[m]) for m in sweep["measures"]}
            for name, values in columns.items()
        }
    )
    page.table(table, caption="mean [95% interval across seeds]", float_format=None)


def _design(page: HtmlPage, result: dict[str, Any]) -> None:
    """What the control was and where the recovery was read: both change what the numbers say."""
    random = result["arms"].get(RANDOM_ARM, {})
    kind = random.get("control")
    notes = []
    if kind == "complement":
        notes.append(
            "The control arm holds the concept set's complement (the pool outside the set was "
            "no larger than the set): it is not a random draw, and 'concept - random' below is "
            "'concept - complement'."
        )
    elif kind == "random-any":
        notes.append("The control draws its neurons from all neurons, the concept's included.")
    stopped = result.get("base_stopped")
    if stopped:
        notes.append(
            "Base fine-tuning ended: "
            + ", ".join(f"{why} in {n} seed{'s' if n != 1 else ''}" for why, n in stopped.items())
            + " (plateau: the probe loss stopped improving; cap: the step limit came first, so "
            "retraining also continues training). The control arm's change from base is the "
            "yardstick of what retraining alone still changes."
        )
    grid = result["arms"][CONCEPT_ARM].get("grid")
    if grid and not isinstance(grid[0], list):
        notes.append("Recovery read at retraining steps " + ", ".join(f"{g:g}" for g in grid) + ".")
    elif grid:
        notes.append("The seeds were evaluated at different steps (see each seed's curve).")
    if notes:
        page.paragraph(" ".join(notes))


def _measures(page: HtmlPage, measures: dict[str, str], result: dict[str, Any]) -> None:
    columns = {arm: result["arms"][arm] for arm in result["arms"]}
    if "concept_minus_random" in result:
        columns["concept - random"] = result["concept_minus_random"]
    table = pd.DataFrame(
        {name: {m: as_text(values[m]) for m in measures} for name, values in columns.items()}
    )
    page.table(table, caption="mean [95% interval across seeds]", float_format=None)


def _stage_scores(page: HtmlPage, result: dict[str, Any]) -> None:
    score = _score(result)
    rows = []
    for arm, data in result["arms"].items():
        for stage, entities in data[score].items():
            rows.append(
                {"arm": arm, "stage": stage, **{e: as_text(v) for e, v in entities.items()}}
            )
    title = (
        "Entity F1 per stage"
        if score == "f1"
        else "Next-token loss per stage, on the concept's tokens and on every other token (nats)"
    )
    with page.details(f"{title} (mean [95% interval])"):
        page.table(pd.DataFrame(rows).set_index(["arm", "stage"]), float_format=None)


def _readable(page: HtmlPage, result: dict[str, Any], concept: str) -> None:
    """Per arm and stage, the concept probe's readability at each layer across seeds: sign-free
    at the residual stream and the MLP output, or (older sweeps) the raw AUC."""
    if all(data.get("readability") for data in result["arms"].values()):
        _readability(page, result, concept)
        return
    rows = [
        {"arm": arm, "stage": stage, **{f"layer {k}": as_text(v) for k, v in layers.items()}}
        for arm, data in result["arms"].items()
        for stage, layers in (data.get("readable") or {}).items()
    ]
    if not rows:
        return
    with page.details(f"Where {concept} is linearly readable (probe AUC per layer)"):
        page.paragraph(
            f"A logistic-regression probe for {concept} (its tokens against the rest) trained at "
            "each stage on each layer's residual stream (blocks.{l}.hook_resid_post) of the probe "
            "sentences, with the arm's removal held, scored on the validation tokens: 0.5 is not "
            "readable. Mean [95% interval across seeds; seed range where a t-interval leaves "
            "[0, 1]]."
        )
        page.table(pd.DataFrame(rows).set_index(["arm", "stage"]), float_format=None)


def _readability(page: HtmlPage, result: dict[str, Any], concept: str) -> None:
    points = {
        "resid_post": "residual stream",
        "mlp_out": "MLP output",
        "resid_post_fixed": "residual stream, base's probe held",
        "mlp_out_fixed": "MLP output, base's probe held",
        HEAD_READING: "the head's own score",
    }
    rows = []
    for arm, data in result["arms"].items():
        for point, stages in data["readability"].items():
            for stage, layers in stages.items():
                rows.append(
                    {
                        "arm": arm,
                        "point": points.get(point, point),
                        "stage": stage,
                        **{f"layer {k}": _cell(v, raw=_signed(point)) for k, v in layers.items()},
                    }
                )
    with page.details(f"Where {concept} is linearly readable (sign-free probe readability)"):
        page.paragraph(
            f"A logistic-regression probe for {concept} (its tokens against the rest) at each "
            "stage and layer, with the arm's removal held, fitted on one half of the "
            "validation sentences and scored on the other: never on the probe sentences the "
            "ranking and any eraser were fitted on. At the residual stream after block l "
            "(blocks.{l}.hook_resid_post) and at the MLP output (blocks.{l}.hook_mlp_out); "
            "'base's probe held' rows score the base stage's probe unchanged at every stage "
            "(is the concept still where the base model wrote it?), and show the raw AUC, "
            "whose sign the base fixed; so do 'the head's own score' rows, the tagging head's "
            "log-odds of the concept's tags, nothing fitted (does the head still rank the "
            "concept's tokens first, whatever its decisions?). Elsewhere the figure is the "
            "sign-free readability max(AUC, 1 - AUC): mean [95% interval "
            "across seeds; seed range where a t-interval leaves [0, 1]]; 0.5 is not readable, "
            "and its interval cannot go below 0.5 by construction. 'at chance' only where the "
            "raw AUC's interval across seeds holds 0.5 and so does every seed's own interval; "
            "'flipped' where the raw AUC's interval lies below 0.5 (readable, sign reversed)."
        )
        page.table(pd.DataFrame(rows).set_index(["arm", "point", "stage"]), float_format=None)


def _signed(point: str) -> bool:
    """Whether a reading's sign is known (the base's probe held fixed; the head's own score),
    so that its raw AUC is shown."""
    return point.endswith(FIXED_SUFFIX) or point == HEAD_READING


def _cell(value: dict[str, Any], raw: bool = False) -> str:
    """A reading across seeds: sign-free (``raw``: the raw AUC of a probe held fixed, whose
    sign is known, so that a fall toward 0.5 is not read above it), marked."""
    text = as_text(value["auc" if raw else "sign_free"])
    auc = value["auc"]
    if value["at_chance"]:
        return text + " · at chance"
    if auc["ci_high"] is not None and auc["ci_high"] < 0.5 and not raw:
        return text + " · flipped"
    return text


def _score(result: dict[str, Any]) -> str:
    """The cell's stage score: ``f1`` (NER), or ``lm_loss`` (``--task lm``)."""
    return "lm_loss" if "lm_loss" in result["arms"][CONCEPT_ARM] else "f1"


def _curves(page: HtmlPage, result: dict[str, Any], concept: str) -> None:
    curves = {arm: data["curves"] for arm, data in result["arms"].items()}
    figure = sweep_figures.seed_curves(curves, concept, _score(result))
    page.plotly(figure, height="380px")


PREDICTION_MEASURES = {
    "auc": "ROC AUC (chance 0.5)",
    "precision_at_k": "precision at k",
    "precision_lift": "precision at k - base rate (chance 0)",
}


def _prediction(page: HtmlPage, result: dict[str, Any], concept: str) -> None:
    """Each predictor against each ground truth: mean and interval across seeds (a cell whose
    runs predate predictions has none: no table)."""
    rows = result.get("prediction")
    if not rows:
        return
    for row in rows:
        row.setdefault("arm", CONCEPT_ARM)  # sweeps from before the control was scored
    frame = pd.DataFrame(rows)
    truths = list(dict.fromkeys(frame["truth"]))
    page.paragraph(
        f"Predicting, before retraining, which surviving neurons of the concept arm take {concept} "
        "over (k = the number of such neurons in each run). Every predictor is scored on the "
        "paired control too, where nothing concept-specific was removed: that is its null, "
        "and 'concept - random' (paired per seed) is what it finds beyond it. Chance: AUC 0.5, "
        "precision lift 0. Seeds where a ground truth had no neuron are counted as missing. "
        + "; ".join(f"{name}: {DESCRIPTIONS[name]}" for name in truths if name in DESCRIPTIONS)
        + "."
    )
    for arm in dict.fromkeys(frame["arm"]):
        cells: dict[tuple[str, str], dict[str, str]] = {}  # (truth, predictor) -> text
        for row in rows:
            if row["arm"] != arm:
                continue
            entry = cells.setdefault((row["truth"], row["predictor"]), {})
            entry[PREDICTION_MEASURES[row["measure"]]] = as_text({**row, "n": row["n_seeds"]})
        keys = sorted(cells, key=lambda key: truths.index(key[0]))  # stable: predictors in order
        table = pd.DataFrame([cells[key] for key in keys], index=pd.MultiIndex.from_tuples(keys))
        table.index.names = ["truth", "predictor"]
        label = arm if arm == "concept - random" else f"{arm} arm"
        page.table(table, caption=f"{label}: mean [95% interval across seeds]", float_format=None)
    _prediction_plot(page, frame[frame["arm"] != "concept - random"])


def _prediction_plot(page: HtmlPage, frame: pd.DataFrame) -> None:
    page.plotly(sweep_figures.predictor_auc(frame), height="340px")


def _chase(page: HtmlPage, measures: dict[str, str], result: dict[str, Any], concept: str) -> None:
    """Every round of a chase: each arm's measures and the paired concept-minus-random
    difference, mean and interval across seeds, and concept F1 after each round's retraining
    with its interval (no chase in the cell: nothing)."""
    chase = result.get("chase")
    if not chase:
        return
    measures = measures or {m: m for m in chase["per_round"][0]["arms"][CONCEPT_ARM]}
    stopped = chase.get("stopped_early") or {}
    page.paragraph(
        f"Chasing {concept} over {chase['rounds']} rounds: each round holds the next most "
        "salient live neurons as well and retrains (the random arm as many random ones per "
        "layer). Round 1 is the experiment the measures above describe. A seed whose chase "
        "stopped early (--stop-below) did not run the later rounds: there it counts as missing, "
        "so a later round's mean is over the seeds that reached it. "
        + (
            "Stopped early: "
            + "; ".join(f"seed {seed}: {why}" for seed, why in stopped.items())
            + "."
            if stopped
            else "No seed stopped early."
        )
    )
    for entry in chase["per_round"]:
        columns = dict(entry["arms"])
        if "concept_minus_random" in entry:
            columns["concept - random"] = entry["concept_minus_random"]
        table = pd.DataFrame(
            {name: {measures[m]: as_text(v[m]) for m in measures} for name, v in columns.items()}
        )
        page.table(
            table,
            caption=f"Round {entry['round']}: mean [95% interval across seeds], "
            f"seeds that ran it: {entry['seeds_reached']}",
            float_format=None,
        )
    once = chase.get("one_shot")
    if once:
        page.paragraph(
            "Removing more at once instead: the one-shot arm holds every neuron of each seed's "
            f"chase from the base weights at once and retrains one round. {concept} F1 after it "
            f"{as_text(once['retrained'])}; one-shot minus the chase's end, paired per seed (the "
            f"same neurons held): {as_text(once['one_shot_minus_chase'])}."
        )
    _chase_plot(page, chase, concept)


def _chase_plot(page: HtmlPage, chase: dict[str, Any], concept: str) -> None:
    page.plotly(sweep_figures.chase_rounds(chase["per_round"], concept), height="360px")


def _preempt(
    page: HtmlPage, measures: dict[str, str], result: dict[str, Any], concept: str
) -> None:
    """Every arm of a pre-emption and the paired preempt-minus-control difference, mean and
    interval across seeds (none in the cell: nothing)."""
    preempt = result.get("preempt")
    if not preempt:
        return
    measures = measures or {m: m for m in preempt["preempt_minus_control"]}
    count, predictor = preempt["count"], preempt["predictor"]
    page.paragraph(
        f"Pre-empting {concept}'s new home: the preempt arm also holds the {count} surviving "
        f"neurons {predictor} scored highest before retraining; its control, preempt-random, "
        f"{count} random survivors, as many per layer, from the same candidates. "
        "'preempt - preempt-random' is paired per seed (same batches, same count per layer). "
        f"The two arms' extra neurons overlap by {as_text(preempt['overlap'])} neurons."
    )
    columns = dict(preempt["arms"])
    columns[f"{PREEMPT_ARM} - {PREEMPT_RANDOM_ARM}"] = preempt["preempt_minus_control"]
    if "oracle_minus_control" in preempt:
        columns[f"{PREEMPT_ORACLE_ARM} - {PREEMPT_RANDOM_ARM}"] = preempt["oracle_minus_control"]
    table = pd.DataFrame(
        {name: {measures[m]: as_text(v[m]) for m in measures} for name, v in columns.items()}
    )
    page.table(table, caption="Pre-emption: mean [95% interval across seeds]", float_format=None)
    if "oracle_minus_control" in preempt:
        share = preempt.get("share_of_oracle_auc")
        page.paragraph(
            "preempt-oracle holds the survivors that gained the most saliency in each seed's "
            f"concept arm (hindsight: the bound on any predictor). {predictor} bought "
            + (
                f"{share:.0%} of the oracle's mean recovery-AUC change over random (a ratio of "
                "the means across seeds; 0%: random survivors, 100%: hindsight)."
                if share is not None
                else "no defined share of the oracle's change: "
                + preempt.get("share_undefined", "the oracle bought nothing")
                + "."
            )
        )


#: what a sweep's ``savings`` holds besides its measures across seeds
_SAVINGS_EXTRAS = (
    "seeds",
    "naive_curves",
    "targets",
    "targets_reached",
    "naive_minus_concept_base",
)


def _savings(
    page: HtmlPage, measures: dict[str, str], result: dict[str, Any], concept: str
) -> None:
    """Relearning or learning: the concept arm against the naive arm, across seeds, at
    :data:`~neuroplastic.config.RECOVERY_TARGET` of base and at every target, and the two bases
    on the other types."""
    saved = result.get("savings")
    if not saved:
        return
    page.paragraph(
        f"Relearning or learning? The naive arm holds the concept arm's neurons in a model "
        f"fine-tuned identically but with the {concept} tokens out of its loss and its classes "
        f"out of its softmax (it neither learned {concept} nor learned to refuse it), and "
        f"retrains on the same batches. Savings above 0 means relearning {concept} is faster "
        "than learning it from nothing with those neurons gone: something of it survived the "
        "removal. It does not say what, or where. Steps are each arm's lasting recovery (after "
        "which it stays at or above the target); the first crossing is in sweep.json."
    )
    measures = measures or {m: m for m in saved if m not in _SAVINGS_EXTRAS}
    table = pd.DataFrame(
        {"across seeds": {measures[m]: as_text(saved[m]) for m in measures if m in saved}}
    )
    page.table(table, caption="Savings: mean [95% interval across seeds]", float_format=None)
    if saved.get("targets"):
        reached = saved.get("targets_reached", {})
        rows = {
            f"{float(share):.0%} of base": {
                "savings": as_text(at["savings"]),
                "concept arm steps": as_text(at["steps_relearned"]),
                "naive arm steps": as_text(at["steps_naive"]),
                "seeds reached (concept / naive)": (
                    f"{reached[share][CONCEPT_ARM]} / {reached[share][NAIVE_ARM]} of "
                    f"{reached[share]['of']}"
                    if share in reached
                    else "–"
                ),
            }
            for share, at in saved["targets"].items()
        }
        page.table(
            pd.DataFrame(rows).T,
            caption="Savings at each target (lasting recovery): mean [95% interval across seeds]",
            float_format=None,
        )
    if saved.get("naive_minus_concept_base"):
        gaps = {e: as_text(v) for e, v in saved["naive_minus_concept_base"].items()}
        page.table(
            pd.DataFrame({"naive base - concept base": gaps}),
            caption="The two bases on the other types (F1, paired per seed): equally good at "
            f"everything but {concept}?",
            float_format=None,
        )
    curves = {
        a: result["arms"][a]["curves"] for a in (CONCEPT_ARM, RANDOM_ARM) if a in result["arms"]
    }
    curves[NAIVE_ARM] = saved["naive_curves"]
    figure = sweep_figures.savings_seeds(curves, concept)
    page.paragraph(f"{concept} F1 of every seed, concept, random and naive arms.")
    page.plotly(figure, height="380px")


def _causal(page: HtmlPage, result: dict[str, Any], concept: str) -> None:
    """The causal truth across seeds: what ablating each candidate set in the retrained model
    costs the concept, the other types, beyond random survivors, and beyond the others."""
    for arm, record in (result.get("causal") or {}).items():
        if record.get("task") != "ner":
            continue
        ks = sorted({k for k in record["k"] if k is not None})
        rows = {}
        for name, lost in record["lost"].items():
            rows[name] = {
                f"{concept} F1 lost": as_text(lost),
                "other types' F1 lost": as_text(record["others_lost"][name])
                if name in record.get("others_lost", {})
                else "–",
                "beyond matched random": as_text(record["beyond_random"][name])
                if name in record["beyond_random"]
                else "–",
                f"{concept} lost - others lost": as_text(record["specific"][name])
                if name in record.get("specific", {})
                else "–",
            }
        page.paragraph(
            f"Causal truth ({arm} arm): in the retrained model, with the removal held, the "
            f"F1 lost when {', '.join(map(str, ks))} more surviving neurons are ablated: each "
            "predictor's top picks, the realised top gainers, the last stage's top set, and "
            "random survivors (matched_random: as many per layer as the gainers). A set costs "
            f"{concept} something specific only if it costs {concept} more than the other "
            "types (last column); a set of neurons every type uses costs them all."
        )
        page.table(
            pd.DataFrame(rows).T,
            caption="Causal truth: mean [95% interval across seeds]",
            float_format=None,
        )


def _grid(page: HtmlPage, sweep: dict[str, Any], concept: str) -> None:
    """Each grid axis: concept F1 after the first stage against the axis's values (concept,
    random and naive arms), and the retrainer's best case chosen per seed."""
    if not sweep.get("grid"):
        return
    page.heading("The retrainer's choices (--grid)")
    page.paragraph(
        "Each axis of the grid changes one setting of the run and nothing else. The best case "
        "is chosen per seed after the fact (the value that brought the concept back fastest, "
        "and the one that ended highest), as the tamper-resistance literature reports a "
        "defence's worst case: an upper bound on what a retrainer who tunes that setting gets."
    )
    settings = sweep["settings"]
    for axis, values in sweep["grid"].items():
        arms = {}
        for arm in (CONCEPT_ARM, RANDOM_ARM, NAIVE_ARM):
            xs, points = [], []
            for cell, point in settings.items():
                at = _first_stage_f1(sweep["cells"][cell], arm, concept)
                if at is None or at["mean"] is None:
                    continue
                xs.append(point[axis])
                points.append(at)
            if xs:
                arms[arm] = (xs, points)
        figure = sweep_figures.grid_axis(arms, axis, concept)
        page.paragraph(
            f"{concept} F1 at the end of the first retraining stage against {axis} ({values}); "
            "mean and 95% interval across seeds, per cell (cells that differ in other axes "
            "too appear as separate points at one value)."
        )
        page.plotly(figure, height="360px")
        _share_plot(page, sweep, axis, values)
    rows = []
    for axis, cases in (sweep.get("best_case") or {}).items():
        for case in cases:
            rows.append(
                {
                    "axis": axis,
                    "other settings": ", ".join(f"{k}={v}" for k, v in case["fixed"].items()),
                    "values": ", ".join(map(str, case["values"])),
                    f"fastest lasting recovery (steps to {RECOVERY_TARGET:.0%})": as_text(
                        case["fastest_recovery"]
                    ),
                    "chosen per seed": ", ".join(map(str, case["fastest_value"])),
                    f"highest final {concept} F1": as_text(case["highest_final_f1"]),
                    "chosen per seed ": ", ".join(map(str, case["highest_value"])),
                }
            )
    if rows:
        page.table(
            pd.DataFrame(rows),
            caption="The retrainer's best case per axis: mean [95% interval across seeds]",
            index=False,
            float_format=None,
        )
    _along_axis(page, sweep, concept)


def _along_axis(page: HtmlPage, sweep: dict[str, Any], concept: str) -> None:
    """Per axis, each value against the first: the paired difference across seeds of every
    measure and of the concept's F1 at each stage, per arm, with its equivalence verdict."""
    along = sweep.get("along_axis") or {}
    if any(along.values()):
        page.paragraph(
            "Does a setting move the measures beyond seed noise? Each value of an axis against "
            "its first value, with every other setting the same: the difference is taken per "
            "seed (a seed fixes the data, the split and the batches in every cell), then its "
            "mean and 95% interval across seeds. 'within ±m' means an equivalence test (TOST) "
            "shows the difference smaller than the measure's margin; 'not shown within' means "
            "these seeds cannot tell, not that the setting matters."
        )
    for axis, cases in along.items():
        for case in cases:
            table: dict[str, dict[str, str]] = {}
            for arm, measured in case["arms"].items():
                column = table.setdefault(arm, {})
                for stage, entities in measured["f1"].items():
                    if concept in entities:
                        column[f"{concept} F1 at {stage}"] = as_text(entities[concept])
                for measure in sweep["measures"]:
                    column[measure] = as_text(measured[measure])
            fixed = ", ".join(f"{k}={v}" for k, v in case["fixed"].items())
            steps = case.get("base_steps")
            steps = f"; base fine-tuning steps {as_text(steps)}" if steps else ""
            page.table(
                pd.DataFrame(table),
                caption=(
                    f"{axis}={case['value']} minus {axis}={case['reference']} ({fixed}), per seed "
                    f"then across seeds {case['seeds']}: mean [95% interval] of the paired "
                    "difference, and whether it lies within the measure's equivalence "
                    f"margin{steps}"
                ),
                float_format=None,
            )


def _share_plot(page: HtmlPage, sweep: dict[str, Any], axis: str, values: Any) -> None:
    """The concept arm's share of its drop at pruning recovered after k steps, against one axis
    of the grid: a measure relative to each cell's own drop, so cells that lose different
    amounts at pruning compare."""
    lines = {}
    for measure in (m for m in sweep["measures"] if m.startswith("share_recovered_")):
        xs, points = [], []
        for cell, point in sweep["settings"].items():
            at = sweep["cells"][cell]["arms"].get(CONCEPT_ARM, {}).get(measure)
            if not at or at["mean"] is None:
                continue
            xs.append(str(point[axis]))
            points.append(at)
        lines[measure.rsplit("_", 1)[1]] = (xs, points)
    figure = sweep_figures.share_recovered(lines, axis)
    if not figure.data:
        return
    page.paragraph(
        f"The concept arm's share of its drop at pruning recovered after 5, 10 and 30 retraining "
        f"steps, (F1 - F1 pruned) / (F1 base - F1 pruned), against {axis} ({values}); mean and "
        "95% interval across seeds per cell."
    )
    page.plotly(figure, height="360px")


def _first_stage_f1(result: dict[str, Any], arm: str, concept: str) -> dict[str, Any] | None:
    """An arm's concept F1 across seeds at the end of retrain-1 (the naive arm's from its
    savings record)."""
    if arm in result["arms"]:
        return (result["arms"][arm]["f1"].get("retrain-1") or {}).get(concept)
    saved = result.get("savings")
    return saved.get("naive_first_stage_f1") if arm == NAIVE_ARM and saved else None
