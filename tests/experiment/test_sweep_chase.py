"""The sweep's chase (``--rounds``) and pre-empt (``--preempt``) measures: per round and arm
across seeds, with a seed that stopped early counted as missing, paired differences per seed,
and round 1's existing measures untouched by the later rounds."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
from scipy import stats
from tiny import tiny_config

import neuroplastic.experiment.sweep as sweep
from neuroplastic.report.sweep_report import build_sweep_report
from neuroplastic.store.rundir import RunDir, stage_round

CONCEPT = "LOC"


def hand_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% t-interval, by hand."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def assert_interval(
    result: dict, values: list[float | None], bounds: tuple[float, float] | None = None
) -> None:
    finite = [v for v in values if v is not None]
    assert result["values"] == pytest.approx(values)
    assert (result["n"], result["missing"]) == (len(finite), len(values) - len(finite))
    mean, low, high = hand_interval(finite)
    if bounds and (low < bounds[0] or high > bounds[1]):  # the seeds' range instead
        low, high = min(finite), max(finite)
    assert (result["mean"], result["ci_low"], result["ci_high"]) == pytest.approx((mean, low, high))


# -- fabricated per-run measures ---------------------------------------------------------------
#: concept F1 after each round's retraining, per seed and arm; seed 2 stopped after round 2
RETRAINED = {
    0: {"concept": [0.50, 0.40, 0.30], "random": [0.60, 0.55, 0.52]},
    1: {"concept": [0.45, 0.35, 0.20], "random": [0.58, 0.50, 0.49]},
    2: {"concept": [0.52, 0.10], "random": [0.61, 0.57]},
}
#: steps to 90% per seed and arm; None: never recovered in that round
STEPS = {
    0: {"concept": [4.0, 6.0, None], "random": [2.0, 2.5, 3.0]},
    1: {"concept": [5.0, 8.0, 9.0], "random": [1.0, 2.0, 2.0]},
    2: {"concept": [3.0, None], "random": [2.0, 3.0]},
}


def _arm_measures(value: float) -> dict:
    return {
        **{m: value for m in sweep.MEASURES},
        "f1": {"base": {CONCEPT: 0.8}, "pruned": {CONCEPT: value}},
        "curve": {"step": [0.0, 1.0], "f1": [value, 0.8]},
    }


def fabricated(seed: int, chase: bool = True, preempt: bool = False) -> dict:
    run = {
        "seed": seed,
        "concept": CONCEPT,
        "arms": {"concept": _arm_measures(0.1 * seed), "random": _arm_measures(0.2 + seed)},
        "prediction": [],
    }
    if chase:
        per_round = []
        for index in range(len(RETRAINED[seed]["concept"])):
            per_round.append(
                {
                    "round": index + 1,
                    "arms": {
                        arm: {
                            "before": 0.9,
                            "drop": 0.9 - RETRAINED[seed][arm][index] / 2,
                            "removed": RETRAINED[seed][arm][index] / 2,
                            "retrained": RETRAINED[seed][arm][index],
                            "steps_to_recover": math.nan
                            if STEPS[seed][arm][index] is None
                            else STEPS[seed][arm][index],
                            "recovery_auc": RETRAINED[seed][arm][index] + 0.1,
                            "held": 10 * (index + 1),
                            "others_retrained": 0.3 + seed / 10 + index / 100,
                        }
                        for arm in ("concept", "random")
                    },
                }
            )
        stopped = "LOC F1 below --stop-below" if len(per_round) < 3 else None
        run["chase"] = {"rounds": 3, "rounds_run": len(per_round), "stopped_early": stopped}
        run["chase"]["per_round"] = per_round
    if preempt:
        arms = {
            arm: {
                "steps_to_recover_90": None if (seed, arm) == (1, "preempt") else 2.0 + i + seed,
                "recovery_auc": 0.5 + 0.1 * i - 0.05 * seed,
                "pruned_f1": 0.1 * i,
                "last_f1": 0.6 - 0.1 * i + 0.01 * seed**2,
                "others_pruned": 0.8 - 0.01 * i,
                "others_last": 0.85 - 0.02 * i + 0.01 * seed,
            }
            for i, arm in enumerate(
                ("concept", "random", "preempt", "preempt-random", "preempt-oracle")
            )
        }
        arms = {a: {m: math.nan if v is None else v for m, v in d.items()} for a, d in arms.items()}
        run["preempt"] = {
            "predictor": "gradient",
            "count": 20,
            "overlap": seed,
            "arms": arms,
            "preempt_minus_control": {
                m: arms["preempt"][m] - arms["preempt-random"][m] for m in sweep.PREEMPT_MEASURES
            },
            "oracle_minus_control": {
                m: arms["preempt-oracle"][m] - arms["preempt-random"][m]
                for m in sweep.PREEMPT_MEASURES
            },
        }
    return run


def test_chase_per_round_across_seeds_counts_stopped_seeds_as_missing() -> None:
    runs = [fabricated(seed) for seed in (0, 1, 2)]
    result = sweep.aggregate(copy.deepcopy(runs))
    chase = result["chase"]
    assert chase["rounds"] == 3 and [r["round"] for r in chase["per_round"]] == [1, 2, 3]
    assert chase["stopped_early"] == {"2": "LOC F1 below --stop-below"}
    assert [r["seeds_reached"] for r in chase["per_round"]] == [[0, 1, 2], [0, 1, 2], [0, 1]]
    for index, entry in enumerate(chase["per_round"]):
        for arm in ("concept", "random"):
            retrained = [
                RETRAINED[s][arm][index] if index < len(RETRAINED[s][arm]) else None
                for s in (0, 1, 2)
            ]
            assert_interval(entry["arms"][arm]["retrained"], retrained, bounds=(0.0, 1.0))
            steps = [
                STEPS[s][arm][index] if index < len(STEPS[s][arm]) else None for s in (0, 1, 2)
            ]
            assert entry["arms"][arm]["steps_to_recover"]["values"] == steps
        # Paired: concept - random per seed, then the interval of those differences.
        paired = [
            RETRAINED[s]["concept"][index] - RETRAINED[s]["random"][index]
            if index < len(RETRAINED[s]["concept"])
            else None
            for s in (0, 1, 2)
        ]
        assert_interval(entry["concept_minus_random"]["retrained"], paired, bounds=(-1.0, 1.0))
    # Round 3: seed 2 is missing (stopped), so 2 of 3 seeds.
    third = chase["per_round"][2]["arms"]["concept"]["retrained"]
    assert third["mean"] == pytest.approx(0.25) and third["missing"] == 1
    # Steps in round 2, concept arm: seed 2 never recovered -> missing; round 3: seed 0 never
    # recovered and seed 2 stopped -> one value, no interval.
    steps3 = chase["per_round"][2]["arms"]["concept"]["steps_to_recover"]
    assert (steps3["mean"], steps3["ci_low"], steps3["n"], steps3["missing"]) == (9.0, None, 1, 2)
    paired_steps = chase["per_round"][1]["concept_minus_random"]["steps_to_recover"]
    assert paired_steps["values"] == [3.5, 6.0, None]
    # The existing measures are those of the runs without a chase.
    plain = sweep.aggregate([fabricated(seed, chase=False) for seed in (0, 1, 2)])
    assert {k: v for k, v in result.items() if k != "chase"} == plain
    json.dumps(result, allow_nan=False)  # sweep.json stays valid JSON


def test_a_round_that_never_recovers_is_censored_at_its_budget_not_dropped() -> None:
    runs = [fabricated(seed) for seed in (0, 1, 2)]
    for run in runs:
        for entry in run["chase"]["per_round"]:
            for arm in entry["arms"].values():
                arm["budget"] = 90.0  # as chase_measures records it (stages x stage steps)
    chase = sweep.aggregate(runs)["chase"]
    # Round 2, concept arm: seed 2 never recovered, so it counts at 90 and the mean is a bound.
    second = chase["per_round"][1]["arms"]["concept"]["steps_to_recover"]
    assert (second["censored"], second["reached"], second["mean"]) == (1, 2, None)
    assert second["lower_bound"] == pytest.approx((6.0 + 8.0 + 90.0) / 3)
    # Round 3: seed 0 censored, seed 2 stopped before the round (missing, not censored).
    third = chase["per_round"][2]["arms"]["concept"]["steps_to_recover"]
    assert (third["censored"], third["missing"]) == (1, 2)
    assert third["lower_bound"] == pytest.approx((90.0 + 9.0) / 2)
    paired = chase["per_round"][1]["concept_minus_random"]["steps_to_recover"]
    assert paired["at_least"] == [None, None, 90.0 - 3.0]
    assert paired["lower_bound"] == pytest.approx((3.5 + 6.0 + 87.0) / 3)


def test_preempt_across_seeds_pairs_each_seed() -> None:
    runs = [fabricated(seed, chase=False, preempt=True) for seed in (0, 1, 2)]
    preempt = sweep.aggregate(runs)["preempt"]
    assert (preempt["predictor"], preempt["count"], preempt["seeds"]) == ("gradient", 20, [0, 1, 2])
    assert_interval(preempt["overlap"], [0, 1, 2])
    for i, arm in enumerate(("concept", "random", "preempt", "preempt-random")):
        auc = [0.5 + 0.1 * i - 0.05 * s for s in (0, 1, 2)]
        assert_interval(preempt["arms"][arm]["recovery_auc"], auc)
    # preempt (i = 2) minus preempt-random (i = 3), per seed: last F1 -0.1 x... = +0.1 each.
    paired = preempt["preempt_minus_control"]
    assert paired["last_f1"]["values"] == pytest.approx([0.1, 0.1, 0.1])
    assert paired["last_f1"]["ci_low"] == pytest.approx(0.1)
    assert paired["others_last"]["values"] == pytest.approx([0.02, 0.02, 0.02])  # the cost
    # Steps: seed 1's preempt arm never recovered: its difference is missing.
    assert paired["steps_to_recover_90"]["values"] == [-1.0, None, -1.0]
    assert paired["steps_to_recover_90"]["missing"] == 1
    # The oracle (i = 4) minus the same control: AUC +0.1 per seed; preempt bought -0.1, so
    # its share of the oracle's change is -100% (it sped recovery as much as hindsight slowed).
    oracle = preempt["oracle_minus_control"]
    assert oracle["recovery_auc"]["values"] == pytest.approx([0.1, 0.1, 0.1])
    assert preempt["share_of_oracle_auc"] == pytest.approx(-1.0)


def test_no_share_of_an_oracle_that_bought_nothing_shown() -> None:
    # The oracle's AUC change over random: +0.02, -0.03, +0.01 across seeds, an interval
    # around 0 (the real 5-seed sweep's oracle: -0.003 [-0.014, 0.008]). The predictor's
    # -0.1 over a mean of 0 would read as any share at all; it must be undefined, with why.
    runs = [fabricated(seed, chase=False, preempt=True) for seed in (0, 1, 2)]
    for run, change in zip(runs, (0.02, -0.03, 0.01), strict=True):
        arms = run["preempt"]["arms"]
        arms["preempt-oracle"]["recovery_auc"] = arms["preempt-random"]["recovery_auc"] + change
    preempt = sweep.aggregate(runs)["preempt"]
    oracle = preempt["oracle_minus_control"]["recovery_auc"]
    assert oracle["values"] == pytest.approx([0.02, -0.03, 0.01])
    assert oracle["ci_low"] < 0 < oracle["ci_high"]
    assert preempt["share_of_oracle_auc"] is None
    assert "contains 0" in preempt["share_undefined"]


def test_a_preempt_arm_that_never_recovers_is_censored_at_its_budget() -> None:
    runs = [fabricated(seed, chase=False, preempt=True) for seed in (0, 1, 2)]
    for run in runs:
        for arm in run["preempt"]["arms"].values():
            arm["budget"] = 90.0
    preempt = sweep.aggregate(runs)["preempt"]
    # Seed 1's preempt arm never recovered: counted at 90, the mean a lower bound.
    steps = preempt["arms"]["preempt"]["steps_to_recover_90"]
    assert steps["censored"] == 1 and steps["lower_bound"] == pytest.approx((4 + 90 + 6) / 3)
    difference = preempt["preempt_minus_control"]["steps_to_recover_90"]
    assert difference["at_least"] == [None, 90.0 - 6.0, None]  # its control took 2 + 3 + 1 steps
    # A measure no seed is censored in keeps the paired test and its power.
    assert "detectable_80" in preempt["preempt_minus_control"]["recovery_auc"]


def test_sweep_report_shows_rounds_and_preemption_with_intervals() -> None:
    runs = [fabricated(seed, preempt=True) for seed in (0, 1, 2)]
    cell = sweep.aggregate(runs)
    result = {
        "config": tiny_config(rounds=3).to_dict(),
        "seeds": [0, 1, 2],
        "measures": sweep.MEASURES,
        "chase_measures": sweep.CHASE_MEASURES,
        "preempt_measures": sweep.PREEMPT_MEASURES,
        "cells": {"hold-selectivity": cell},
    }
    html = build_sweep_report(json.loads(json.dumps(result, allow_nan=False))).to_html()
    assert "seed 2: LOC F1 below --stop-below" in html
    assert "Round 3: mean [95% interval across seeds], seeds that ran it: [0, 1]" in html
    third = cell["chase"]["per_round"][2]["arms"]["concept"]["retrained"]
    assert f"{third['mean']:.3g} [{third['ci_low']:.3g}, {third['ci_high']:.3g}]" in html
    assert "(n/a in 1 of 3 seeds)" in html
    paired = cell["preempt"]["preempt_minus_control"]["recovery_auc"]
    assert "preempt - preempt-random" in html and f"{paired['mean']:.3g}" in html
    # a recovery and a chase plot (no prediction rows); the chase plot's F1 right after each
    # removal and after each retraining, per arm
    assert html.count('class="np-plot"') == 2
    for arm in ("concept", "random"):
        for when in ("after removal", "retrained"):
            assert f"{arm} arm, {when}" in html
    tables = re.sub(r"<script.*?</script>", "", html, flags=re.S)  # (plotly's code has e+0)
    assert not re.search(r"\de\+0", tables)  # counts of neurons as whole numbers


def test_large_numbers_are_whole_in_the_sweep_report() -> None:
    from neuroplastic.analysis.intervals import as_text

    value = sweep.interval([1844.0, 1844.0, 1844.0])
    assert as_text(value) == "1,844 [1,844, 1,844]"
    assert as_text(sweep.interval([0.0202, 0.01, 0.03])).startswith("0.0201 [")


# -- a real chase run ---------------------------------------------------------------------------
@pytest.fixture
def chased(chase_run) -> RunDir:
    return RunDir(chase_run[0])


PLANTED = 0.777  # every score of round 2, planted: round 1's measures must not see it


class _Planted(RunDir):
    def summary(self):
        summary = super().summary()
        for data in summary["arms"].values():
            for entry in data["stages"]:
                if stage_round(entry["stage"]) > 1:
                    entry["f1"] = {e: PLANTED for e in entry["f1"]}
        for record in summary["chase"]["rounds"][1:]:
            for entry in record["arms"].values():
                entry["retrained"] = {e: PLANTED for e in entry["retrained"]}
        return summary

    def metrics(self):
        frame = super().metrics()
        later = frame["stage"].map(stage_round) > 1
        frame.loc[later, [c for c in frame.columns if c.startswith("f1_")]] = PLANTED
        return frame


class _Round1(RunDir):
    def summary(self):
        summary = super().summary()
        for data in summary["arms"].values():
            data["stages"] = [e for e in data["stages"] if stage_round(e["stage"]) <= 1]
        summary.pop("chase")
        return summary

    def metrics(self):
        frame = super().metrics()
        return frame[frame["stage"].map(stage_round) <= 1].reset_index(drop=True)


def test_round_one_measures_do_not_depend_on_later_rounds(chased, monkeypatch) -> None:
    monkeypatch.setattr(sweep, "RunDir", _Round1)
    alone = sweep.run_measures(chased.path)
    monkeypatch.setattr(sweep, "RunDir", _Planted)
    planted = sweep.run_measures(chased.path)
    assert "chase" not in alone
    assert planted["chase"]["per_round"][1]["arms"]["concept"]["retrained"] == PLANTED
    assert _Planted(chased.path).summary()["arms"]["concept"]["stages"][-1]["f1"][CONCEPT] == (
        PLANTED
    )
    assert json.dumps(planted["arms"]) == json.dumps(alone["arms"])  # NaN-safe equality
    # And by hand, from the run's own files.
    summary = chased.summary()
    for arm, measures in planted["arms"].items():
        stages = {e["stage"]: e["f1"][CONCEPT] for e in summary["arms"][arm]["stages"]}
        assert set(measures["f1"]) == {"base", "pruned", "retrain-1", "retrain-2"}
        assert measures["final_gap_to_base"] == pytest.approx(stages["retrain-2"] - stages["base"])
        drift = stages["retrain-2"] - stages["pruned"]
        assert measures["drift_after_pruning"] == pytest.approx(drift)
        assert measures["curve"]["step"] == [0.0, 1, 2, 3, 4, 5, 6]  # round 1: 2 stages x 3
        # (the one-shot arm is no round of the chase: its round 1 is its own)
        record = summary["chase"]["rounds"][0]["arms"].get(arm)
        first = record or summary["chase"]["one_shot"]["one_shot"]
        assert measures["recovery_auc"] == pytest.approx(first["recovery_auc"])


def test_chase_measures_of_a_real_run(chased) -> None:
    measures = sweep.run_measures(chased.path)["chase"]
    summary = chased.summary()["chase"]
    assert (measures["rounds"], measures["rounds_run"], measures["stopped_early"]) == (3, 3, None)
    for mine, theirs in zip(measures["per_round"], summary["rounds"], strict=True):
        assert mine["round"] == theirs["round"]
        for arm, entry in theirs["arms"].items():
            got = mine["arms"][arm]
            assert got["removed"] == entry["removed"][CONCEPT]
            assert got["retrained"] == entry["retrained"][CONCEPT]
            assert got["held"] == entry["held"]
            steps = entry["steps_to_recover"]
            assert (math.isnan(got["steps_to_recover"]) and steps is None) or (
                got["steps_to_recover"] == steps
            )
            others = [entry["retrained"][e] for e in ("PER", "ORG", "MISC")]
            assert got["others_retrained"] == pytest.approx(np.mean(others))


def test_preempt_measures_of_a_real_run(preempt_run) -> None:
    out, summary = preempt_run
    measures = sweep.run_measures(out)["preempt"]
    recovery = summary["preempt"]["recovery"]
    for arm, got in measures["arms"].items():
        last = recovery[arm]["last"]
        assert got["last_f1"] == last[CONCEPT]
        assert got["others_last"] == pytest.approx(
            np.mean([last[e] for e in ("PER", "ORG", "MISC")])
        )
    difference = measures["preempt_minus_control"]["others_last"]
    assert difference == pytest.approx(
        measures["arms"]["preempt"]["others_last"]
        - measures["arms"]["preempt-random"]["others_last"]
    )
