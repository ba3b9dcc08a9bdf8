"""The run report's sections on a chase (``--rounds``: each round's recovery, collateral and
layers, the one-shot arm) and on pre-emption (``--preempt``: the pre-empting arm against its
control and the oracle)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from neuroplastic.config import (
    CONCEPT_ARM,
    PREEMPT_ARM,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RECOVERY_TARGET,
)
from neuroplastic.report import figures
from neuroplastic.report.html import HtmlPage
from neuroplastic.report.style import fmt, fmt_or_missing, steps_text
from neuroplastic.store.summary import Summary

ONE_SEED_SWEEP = (
    "These are one seed's numbers, a description of this run, not estimates: intervals come "
    "from repeating the run over seeds, `neuroplastic sweep {flags}`."
)


def chase_section(
    page: HtmlPage, metrics: pd.DataFrame, summary: Summary | None, concept: str
) -> None:
    """A chase's rounds (``--rounds``): how fast each came back, what it cost the other entity
    types, and where each round's new neurons sat (no chase in the summary: no section)."""
    chase = summary.chase if summary else None
    if not chase:
        return
    rounds = chase["rounds"]
    asked = summary.config.get("rounds", chase["rounds_run"])
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
    _chase_recovery(page, metrics, summary, rounds, concept)
    _one_shot(page, chase.get("one_shot"), concept)
    _chase_collateral(page, summary, rounds, concept)
    _chase_layers(page, rounds, summary)


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
    page: HtmlPage, metrics: pd.DataFrame, summary: Summary, rounds: list[dict], concept: str
) -> None:
    from neuroplastic.store.rundir import stage_round

    page.paragraph(
        f"Per round: {concept} F1 just before the round's removal (base in round 1, else after "
        f"the previous round), right after it and after its retraining, the retraining steps "
        f"from the round's start until {concept} F1 is back to {RECOVERY_TARGET:.0%} of its F1 "
        "before the removal (interpolated between evaluations; 'not reached' within the round), "
        f"the recovery AUC (mean of {concept} F1 / its F1 before the removal over the round's "
        "steps; 1 = never lost) and the neurons the round added and held in all. Each round is "
        "measured against the model it removed from: against base, a later round that never "
        f"falls below {RECOVERY_TARGET:.0%} of base would read 0 steps by construction."
    )
    for record in rounds:
        rows = {
            arm: {
                f"{concept} F1 before the removal": fmt(
                    (entry.get("before") or {}).get(concept), ".3f"
                ),
                f"{concept} F1 after removal": fmt(entry["removed"].get(concept), ".3f"),
                f"{concept} F1 after retraining": fmt(entry["retrained"].get(concept), ".3f"),
                f"steps to {RECOVERY_TARGET:.0%} of that": steps_text(entry["steps_to_recover"]),
                "recovery AUC": fmt(entry["recovery_auc"], ".3f"),
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
    first = rows[rows["arm"] == rows["arm"].iloc[0]] if len(rows) else rows
    starts = []
    for record in rounds:
        mine = first[first["stage"].map(lambda s: stage_round(str(s))) == record["round"]]
        if len(mine):
            starts.append((record["round"], float(mine["step"].min())))
    figure = figures.chase_recovery(
        rows,
        column=column,
        arms=list(rounds[0]["arms"]),
        round_starts=starts,
        base_score=summary.base_scores().get(concept),
        concept=concept,
    )
    page.paragraph(
        f"{concept} F1 against training step over every round, each arm; dotted lines mark "
        "where each round starts (its neurons removed), the dashed line is "
        f"{RECOVERY_TARGET:.0%} of the base F1."
    )
    page.plotly(figure, height="360px")


def _chase_collateral(page: HtmlPage, summary: Summary, rounds: list[dict], concept: str) -> None:
    entities = [
        e for e in rounds[0]["arms"][CONCEPT_ARM]["retrained"] if e not in (concept, "overall")
    ]
    if not entities:
        return
    base = summary.base_scores()
    page.paragraph(
        f"Collateral damage: the F1 of the other entity types after each round's retraining "
        "against the neurons held so far. Holding more neurons costs every type something; what "
        f"the concept arm costs beyond the random arm at the same count is what removing "
        f"{concept}'s neurons costs the other types. Held 0 is the base model."
    )
    rows = [{"round": "base", "arm": "–", "neurons held": "0"}]
    rows[0].update({f"{e} F1": fmt(base.get(e), ".3f") for e in entities})
    for record in rounds:
        for arm, entry in record["arms"].items():
            row = {"round": str(record["round"]), "arm": arm, "neurons held": str(entry["held"])}
            row.update({f"{e} F1": fmt(entry["retrained"].get(e), ".3f") for e in entities})
            rows.append(row)
    page.table(
        pd.DataFrame(rows),
        caption="Other entity types' F1 after each round's retraining",
        index=False,
        float_format=None,
    )
    fig = figures.chase_collateral(rounds, base, entities)
    page.plotly(fig, height="340px")


def _chase_layers(page: HtmlPage, rounds: list[dict], summary: Summary) -> None:
    n_layers = summary.config.get("n_layers")
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
            row["mean layer of the added"] = fmt(entry["added_mean_layer"], ".2f")
            row["already salient at base"] = (
                fmt(entry.get("already_salient_at_base"), ".0%") if arm == CONCEPT_ARM else "–"
            )
            rows.append(row)
    page.table(
        pd.DataFrame(rows),
        caption="Neurons added per layer, per round and arm",
        index=False,
        float_format=None,
    )


def preempt_section(page: HtmlPage, summary: Summary | None, concept: str) -> None:
    """The pre-empting arm against its control, with the concept and random arms beside
    (``--preempt``; none in the summary: no section)."""
    preempt = summary.preempt if summary else None
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
        f"ones. Steps to {RECOVERY_TARGET:.0%}: retraining steps from pruning until "
        f"{concept} F1 is back to {RECOVERY_TARGET:.0%} of its base value (interpolated; 'not "
        f"reached' within the run); recovery AUC: mean of {concept} F1 / base F1 over the "
        "retraining steps. "
        + ONE_SEED_SWEEP.format(flags=f"--preempt {predictor} --preempt-count {count}")
    )
    recovery = preempt["recovery"]
    entities = list(dict.fromkeys(e for data in recovery.values() for e in data["last"]))
    entities.sort(key=lambda e: (e != concept, e))
    rows = {}
    for arm, data in recovery.items():
        row = {
            f"steps to {RECOVERY_TARGET:.0%} of base": steps_text(data["steps_to_recover_90"]),
            "recovery AUC": fmt(data["recovery_auc"], ".3f"),
        }
        for entity in entities:
            row[f"{entity} F1 pruned"] = fmt(data["pruned"].get(entity), ".3f")
            row[f"{entity} F1 last"] = fmt(data["last"].get(entity), ".3f")
        rows[arm] = row
    page.table(
        pd.DataFrame(rows).T,
        caption=f"Recovery of {concept} in every arm",
        float_format=None,
    )
    diff = preempt["preempt_minus_control"]
    difference = {
        f"steps to {RECOVERY_TARGET:.0%} of base": fmt_or_missing(
            diff["steps_to_recover_90"], "+.1f", "n/a (not reached in an arm)"
        ),
        "recovery AUC": fmt_or_missing(diff["recovery_auc"], "+.3f"),
        **{f"{e} F1 last": fmt_or_missing(diff["last"].get(e), "+.3f") for e in entities},
    }
    columns = {f"{PREEMPT_ARM} - {PREEMPT_RANDOM_ARM}": difference}
    oracle = preempt.get("oracle_minus_control")
    if oracle is not None:
        columns[f"{PREEMPT_ORACLE_ARM} - {PREEMPT_RANDOM_ARM}"] = {
            f"steps to {RECOVERY_TARGET:.0%} of base": fmt_or_missing(
                oracle["steps_to_recover_90"], "+.1f", "n/a (not reached in an arm)"
            ),
            "recovery AUC": fmt_or_missing(oracle["recovery_auc"], "+.3f"),
            **{f"{e} F1 last": fmt_or_missing(oracle["last"].get(e), "+.3f") for e in entities},
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
