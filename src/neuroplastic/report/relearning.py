"""The report's "Relearning or learning?" section: the concept arm's return against the same
neurons held in a model never taught the concept (``--naive``), and what retraining read
(``--relearn``, ``--relearn-sentences``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from neuroplastic.analysis.scores import recovery_curves
from neuroplastic.config import CONCEPT_ARM, NAIVE_ARM, RANDOM_ARM
from neuroplastic.report import figures
from neuroplastic.report.html import HtmlPage
from neuroplastic.store.rundir import stage_round
from neuroplastic.store.summary import Summary

#: the arms the section's curves show, in drawing order
CURVE_ARMS = (CONCEPT_ARM, RANDOM_ARM, NAIVE_ARM)


def relearning(
    page: HtmlPage, metrics: pd.DataFrame, summary: Summary | None, concept: str
) -> None:
    """The section, when the run has a naive arm or retrained on other data than the paper's."""
    if summary is None or (summary.savings is None and summary.relearn is None):
        return
    page.heading("Relearning or learning?")
    relearn = summary.relearn
    if relearn:
        page.paragraph(
            f"{relearn['what'][0].upper()}{relearn['what'][1:]}; every arm retrained the same "
            f"way, so the control stays paired ({relearn['mention_concept']} of the "
            f"{relearn['sentences']} sentences mention {concept}). "
            + _relearn_meaning(relearn["mode"], concept)
        )
    saved = summary.savings
    if not saved or "savings" not in saved:
        return
    _plot(page, metrics, saved["target"], concept)
    page.paragraph(_savings_sentence(saved, concept))


def _relearn_meaning(mode: str, concept: str) -> str:
    if mode == "masked":
        return (
            f"If {concept} F1 comes back with no {concept} label in the loss, the removal left "
            "something that other supervision re-awakens; if it stays down, recovery under "
            "--relearn same needed the labels (it may still be relearning, which the naive "
            "arm measures)."
        )
    if mode == "retain":
        return (
            f"No sentence shows a {concept} word: a return of {concept} F1 here cannot be "
            "learned from the data; it must come from what the network kept."
        )
    return (
        "A subset: how little data brings the concept back (compare runs with other "
        "--relearn-sentences)."
    )


def _plot(page: HtmlPage, metrics: pd.DataFrame, target: float, concept: str) -> None:
    curves = recovery_curves(metrics, metric="f1")
    curves = curves[
        (curves["entity"] == concept)
        & (curves["stage"] != "base")
        & curves["stage"].map(lambda s: stage_round(str(s)) == 1)
    ]
    fig = figures.savings_curves(curves, arms=CURVE_ARMS, target=target, concept=concept)
    page.paragraph(
        f"{concept} F1 against retraining step, round 1: the concept arm (its {concept} neurons "
        "held after it learned the concept), the random arm (as many random neurons held), "
        f"and the naive arm (the concept arm's neurons held in a model fine-tuned identically "
        f"but with the {concept} tokens out of its loss, so it never learned {concept}), all "
        f"on the same batches. The concept arm above the naive arm is savings: relearning is "
        f"faster than first learning. It does not say what was kept, only that something was."
    )
    page.plotly(fig, height="380px")


def _savings_sentence(saved: dict[str, Any], concept: str) -> str:
    naive_f1 = saved["naive_base"]["f1"][concept]
    text = (
        f"The naive base reached {concept} F1 {naive_f1:.3f} after "
        f"{saved['naive_base']['steps']} steps without {concept} in its loss. "
    )
    if saved["savings"] is None:
        return text + f"Savings is undefined here: {saved.get('why_none', 'no target reached')}."
    relearned, naive = saved["steps_relearned"], saved["steps_naive"]
    if saved["bound"] == "upper":
        relearned_text = f"never got back to it within {saved['relearn_budget']:.0f} steps"
        naive_text = (
            f"the naive arm got there in {naive:.1f}, so savings is at most "
            f"{saved['savings']:.3f} (an upper bound: the concept arm is censored at its budget)"
        )
    elif saved["bound"] == "lower":
        relearned_text = f"took {relearned:.1f} steps"
        naive_text = (
            f"the naive arm never reached it within {saved['naive_budget']:.0f} steps, so "
            f"savings is at least {saved['savings']:.3f} (a lower bound: the naive arm is "
            "censored at its budget)"
        )
    else:
        relearned_text = f"took {relearned:.1f} steps"
        naive_text = (
            f"the naive arm in {naive:.1f}: savings 1 - {relearned:.1f} / {naive:.1f} = "
            f"{saved['savings']:.3f}"
        )
    area = saved["area_between"]
    return (
        text + f"To {concept} F1 {saved['target']:.3f}, the concept arm {relearned_text} "
        f"and {naive_text}. Over the first stage, the concept arm's F1 was on average "
        + (f"{area:+.3f} above the naive arm's" if area is not None else "not comparable")
        + ". One seed: intervals come from `neuroplastic sweep --naive`."
    )
