import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from tiny import TINY

import neuroplastic.core.curves as curves
import neuroplastic.experiment.sweep as sweep
from neuroplastic.cli.commands import main
from neuroplastic.config import ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.report.sweep_report import build_sweep_report
from neuroplastic.store.rundir import RunDir

# A tiny run long enough for a non-zero LOC F1, with an evaluation every 2 retraining steps.
SWEPT = dict(TINY, base_steps=40, plateau_every=0, stage_steps=4, learning_rate=1e-2, eval_every=2)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = sweep.run_sweep(
        ExperimentConfig(**SWEPT), out, seeds=[0, 1, 2], modes=["hold", "regrow"],
        progress=False, log=quiet,
    )  # fmt: skip
    return out, result


@pytest.mark.slow  # a sweep of several runs
def test_one_resumable_run_per_cell_and_seed(swept, monkeypatch):
    out, result = swept
    assert set(result["cells"]) == {"hold-selectivity", "regrow-selectivity"}
    for cell in result["cells"]:
        endings = []
        for seed in (0, 1, 2):
            run = RunDir(out / cell / f"seed-{seed}")
            config = run.config()
            assert config["seed"] == seed and config["mode"] == cell.split("-")[0]
            endings.append(run.summary()["base"]["stopped"])
        # How each seed's base fine-tuning ended, counted.
        assert result["cells"][cell]["base_stopped"] == {e: endings.count(e) for e in endings}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(sweep, "run_experiment", must_not_run)
    again = sweep.run_sweep(
        ExperimentConfig(**SWEPT), out, seeds=[0, 1, 2], modes=["hold", "regrow"],
        progress=False, log=quiet,
    )  # fmt: skip
    assert again == json.loads(json.dumps(result))  # NaN-free, so equal after a JSON trip
    assert json.loads((out / "sweep.json").read_text()) == again


@pytest.mark.slow  # a sweep of several runs
def test_measures_come_from_each_run_and_intervals_from_seeds(swept):
    out, result = swept
    cell = result["cells"]["hold-selectivity"]
    drops, aucs = [], []
    for seed in (0, 1, 2):
        run = RunDir(out / "hold-selectivity" / f"seed-{seed}")
        stages = {s["stage"]: s["f1"]["LOC"] for s in run.summary()["arms"]["concept"]["stages"]}
        drops.append(stages["base"] - stages["pruned"])
        metrics = run.metrics()
        rows = metrics[(metrics["arm"] == "concept") & (metrics["step"] >= 0)]
        rows = rows[~rows["stage"].str.startswith("base")].sort_values("step")
        assert rows["step"].tolist() == [0, 2, 4, 6, 8]  # eval_every 2
        trapezoids = (rows["f1_LOC"] / stages["base"]).rolling(2).mean().dropna() * 2
        aucs.append(trapezoids.sum() / 8)
    drop = cell["arms"]["concept"]["drop_at_pruning"]
    assert drop["values"] == pytest.approx(drops)
    assert cell["arms"]["concept"]["recovery_auc"]["values"] == pytest.approx(aucs)
    half = stats.t.ppf(0.975, 2) * pd.Series(drops).std() / math.sqrt(3)
    assert drop["mean"] == pytest.approx(sum(drops) / 3)
    if half > 0:
        assert drop["ci_high"] - drop["mean"] == pytest.approx(half)
    paired = cell["concept_minus_random"]["drop_at_pruning"]["values"]
    random = cell["arms"]["random"]["drop_at_pruning"]["values"]
    assert paired == pytest.approx([c - r for c, r in zip(drops, random, strict=True)])
    assert set(cell["arms"]["concept"]["f1"]) == {"base", "pruned", "retrain-1", "retrain-2"}


def test_steps_to_recover_and_auc_by_hand():
    curve = pd.DataFrame({"step": [0.0, 10, 20, 30], "f1": [0.2, 0.5, 0.9, 0.95]})
    # 90% of base 1.0 is reached between 10 (0.5) and 20 (0.9): exactly at 20.
    assert curves.steps_to_recover(curve, 0.9) == pytest.approx(20)
    assert curves.steps_to_recover(curve, 0.7) == pytest.approx(15)
    assert curves.steps_to_recover(curve, 0.1) == 0
    assert math.isnan(curves.steps_to_recover(curve, 0.99))
    # Trapezoids: (0.35 + 0.7 + 0.925) * 10 / 30 with base 1.
    assert curves.recovery_auc(curve, 1.0) == pytest.approx((0.35 + 0.7 + 0.925) / 3)
    assert curves.recovery_auc(curve, 0.5) == pytest.approx(2 * (0.35 + 0.7 + 0.925) / 3)


def test_lasting_recovery_waits_for_the_curve_to_stay_up():
    """The issue's seed: it crosses the target (0.857) at step 6, falls back below it until
    step 21, and is above it from then on. The first crossing interpolates between steps 4 and
    6; lasting recovery between the last evaluation below (21) and the next (30)."""
    curve = {
        "step": [0.0, 2, 4, 6, 8, 11, 15, 21, 30],
        "f1": [0.07, 0.5, 0.8, 0.86, 0.844, 0.79, 0.781, 0.849, 0.9],
    }
    target = 0.857
    assert curves.steps_to_recover(curve, target) == pytest.approx(4 + 0.057 / 0.06 * 2)
    assert curves.steps_to_lasting_recovery(curve, target) == pytest.approx(
        21 + (0.857 - 0.849) / (0.9 - 0.849) * 9
    )
    # A monotone curve: both are the same crossing.
    rising = {"step": [0.0, 10, 20, 30], "f1": [0.2, 0.5, 0.9, 0.95]}
    assert curves.steps_to_lasting_recovery(rising, 0.7) == pytest.approx(15)
    # Never below: the first step; ending below (back, then lost again): censored.
    assert curves.steps_to_lasting_recovery(rising, 0.1) == 0
    fallen = {"step": [0.0, 10, 20], "f1": [0.2, 0.95, 0.5]}
    assert curves.steps_to_recover(fallen, 0.9) == pytest.approx(0.7 / 0.75 * 10)
    assert math.isnan(curves.steps_to_lasting_recovery(fallen, 0.9))
    measured = curves.recovery(curve, base=0.857 / 0.9)
    assert measured["lasting"] and measured["reached"]
    assert measured["steps_to_lasting_recovery"] == pytest.approx(22.41, abs=0.01)
    assert curves.recovery(fallen, base=1.0)["lasting"] is False


def test_interval_counts_runs_that_never_recovered():
    result = sweep.interval([10.0, float("nan"), 14.0])
    assert result["mean"] == 12 and result["n"] == 2 and result["missing"] == 1
    half = stats.t.ppf(0.975, 1) * math.sqrt(8) / math.sqrt(2)
    assert result["ci_low"] == pytest.approx(12 - half)
    assert result["values"] == [10.0, None, 14.0]
    assert sweep.interval([1.0])["ci_low"] is None


@pytest.mark.slow  # a sweep of several runs
def test_the_sweep_report_shows_every_cell_with_intervals(swept):
    _, result = swept
    html = build_sweep_report(json.loads(json.dumps(result))).to_html()
    for cell in result["cells"]:
        assert f"<h2>{cell}</h2>" in html
    drop = result["cells"]["hold-selectivity"]["arms"]["concept"]["drop_at_pruning"]
    assert f"{drop['mean']:.3g}" in html
    assert html.count('class="np-plot"') == 4  # a recovery and a prediction plot per cell


@pytest.mark.slow  # a sweep of several runs
def test_the_sweep_command(tmp_path, capsys):
    args = ["sweep", "--out", str(tmp_path), "--seeds", "0,1", "--quiet"]
    for name, value in {**SWEPT, "stages": 1}.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "hold-selectivity: LOC F1 drop at pruning" in printed
    assert (tmp_path / "report.html").is_file()
    assert main(["sweep", "--out", str(tmp_path), "--seeds", "0,0", "--quiet"]) == 2
    assert "distinct seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--out", str(tmp_path), "--seeds", "0", "--mode", "hold,keep"])


def test_an_lm_sweep_takes_no_grid(tmp_path):
    config = ExperimentConfig(**{**SWEPT, "model": "tiny-gpt2", "task": "lm"})
    with pytest.raises(NeuroplasticError, match="needs --task ner"):
        sweep.run_sweep(config, tmp_path, seeds=[0], grid={"relearn_lr": [1e-4, 1e-3]}, log=quiet)


@pytest.mark.slow  # a sweep of two runs
def test_an_lm_sweep_measures_the_loss_rise_and_its_recovery(tmp_path):
    """``--task lm``: each arm's rise in next-token loss at the removal (concept and other
    tokens), recovery as the share of that rise won back, computed here by hand from each
    run's summary.json and metrics.jsonl; intervals across the seeds; a report that says
    loss, not F1."""
    settings = {**SWEPT, "model": "tiny-gpt2", "task": "lm", "fraction": 0.3}
    result = sweep.run_sweep(
        ExperimentConfig(**settings), tmp_path, seeds=[0, 1], progress=False, log=quiet
    )
    cell = result["cells"]["hold-selectivity"]
    assert "specificity_at_pruning" in result["measures"]
    assert "F1" not in result["measures"]["drop_at_pruning"]
    for arm in ("concept", "random"):
        rises, specific, shares = [], [], []
        for seed in (0, 1):
            run = RunDir(tmp_path / "hold-selectivity" / f"seed-{seed}")
            stages = {s["stage"]: s["lm_loss"] for s in run.summary()["arms"][arm]["stages"]}
            base, pruned = stages["base"], stages["pruned"]
            rises.append(pruned["concept"] - base["concept"])
            specific.append(rises[-1] - (pruned["other"] - base["other"]))
            rows = sorted(
                (r for r in run.metrics_rows() if r["arm"] == arm and r["stage"] != "base"),
                key=lambda r: r["step"],
            )
            steps = [float(r["step"]) for r in rows]
            losses = [r["lm_loss"]["concept"] for r in rows]
            assert losses[0] == pytest.approx(pruned["concept"])
            rise = losses[0] - base["concept"]
            if rise >= math.log(1.1) and steps[-1] >= 5:
                at_5 = float(np.interp(5.0, steps, losses))
                shares.append((losses[0] - at_5) / rise)
            else:  # no rise to take a share of: undefined, not censored
                shares.append(None)
        measured = cell["arms"][arm]
        assert measured["drop_at_pruning"]["values"] == pytest.approx(rises)
        assert measured["specificity_at_pruning"]["values"] == pytest.approx(specific)
        got = measured["share_recovered_5"]["values"]
        assert [g is None for g in got] == [s is None for s in shares]
        assert [g for g in got if g is not None] == pytest.approx([s for s in shares if s])
        assert set(measured["lm_loss"]["pruned"]) == {"concept", "other"}
    # the random arm is its own control: no gap to close
    assert cell["arms"]["random"]["control_gap_closed_5"]["values"] == [None, None]
    paired = cell["concept_minus_random"]["specificity_at_pruning"]["values"]
    concept = cell["arms"]["concept"]["specificity_at_pruning"]["values"]
    random = cell["arms"]["random"]["specificity_at_pruning"]["values"]
    assert paired == pytest.approx([c - r for c, r in zip(concept, random, strict=True)])
    html = build_sweep_report(json.loads(json.dumps(result))).to_html()
    assert "Next-token loss per stage" in html and "next-token loss on LOC" in html


def test_readability_across_seeds_by_hand_and_in_the_report():
    from neuroplastic.experiment.sweep import _readable_across
    from neuroplastic.report.html import HtmlPage
    from neuroplastic.report.sweep_report import _readable

    per_seed = [
        {"readable": {"base": {"0": 0.90, "1": 0.95}, "pruned": {"0": 0.52, "1": 0.60}}},
        {"readable": {"base": {"0": 0.80, "1": 0.85}, "pruned": {"0": 0.48}}},
        {"readable": {"base": {"0": 0.85, "1": 0.90}, "pruned": {"0": 0.50, "1": 0.58}}},
    ]
    table = _readable_across(per_seed)
    assert list(table) == ["base", "pruned"]
    assert list(table["pruned"]) == ["0"]  # layer 1 lacks a seed: left out, not averaged
    base0 = table["base"]["0"]
    assert base0["mean"] == pytest.approx(0.85) and base0["n"] == 3
    half = stats.t.ppf(0.975, 2) * 0.05 / math.sqrt(3)  # sd of 0.9, 0.8, 0.85 is 0.05
    assert (base0["ci_low"], base0["ci_high"]) == pytest.approx((0.85 - half, 0.85 + half))
    # the same spread about 0.9 passes an AUC of 1: the seeds' range instead
    assert table["base"]["1"]["method"] == "seed range"
    assert (table["base"]["1"]["ci_low"], table["base"]["1"]["ci_high"]) == (0.85, 0.95)
    page = HtmlPage("t")
    _readable(page, {"arms": {"concept": {"readable": table}}}, "LOC")
    text = page._repr_html_()
    assert "linearly readable" in text and "layer 0" in text and "0.85 [" in text


def test_sign_free_readability_across_seeds_says_at_chance_only_where_intervals_allow():
    """Three seeds. Layer 0 reads with the sign flipped in every seed (raw 0.37-0.40, each
    seed's interval below 0.5): readable, 0.62 sign-free, not at chance. Layer 1 straddles 0.5
    in every seed and across seeds: at chance. Layer 2 flips sign between seeds (0.3, 0.7,
    0.5): the raw mean is 0.5, but two seeds' own intervals exclude it: not at chance."""
    from neuroplastic.experiment.sweep import _readability_across
    from neuroplastic.report.html import HtmlPage
    from neuroplastic.report.sweep_report import _readable

    def reading(auc, half):
        return {"auc": auc, "sign_free": max(auc, 1 - auc), "low": auc - half, "high": auc + half}

    per_seed = [
        {"probes": {"resid_post": {"pruned": {"0": reading(a, 0.03), "1": reading(b, 0.05),
                                              "2": reading(c, 0.04)}}}}
        for a, b, c in ((0.37, 0.49, 0.3), (0.40, 0.52, 0.7), (0.38, 0.50, 0.5))
    ]  # fmt: skip
    table = _readability_across(per_seed)["resid_post"]["pruned"]
    flipped, chance, mixed = table["0"], table["1"], table["2"]
    assert flipped["sign_free"]["mean"] == pytest.approx((0.63 + 0.60 + 0.62) / 3)
    assert flipped["auc"]["ci_high"] < 0.5 and flipped["seeds_at_chance"] == 0
    assert not flipped["at_chance"]
    assert chance["at_chance"] and chance["seeds_at_chance"] == 3
    assert mixed["auc"]["ci_low"] <= 0.5 <= mixed["auc"]["ci_high"]
    assert mixed["seeds_at_chance"] == 1 and not mixed["at_chance"]
    assert mixed["sign_free"]["mean"] == pytest.approx(0.6333333)
    # a seed from before the readings: nothing aggregated (older sweeps show the raw table)
    assert _readability_across([*per_seed, {"readable": {"pruned": {"0": 0.5}}}]) == {}
    page = HtmlPage("t")
    _readable(
        page, {"arms": {"concept": {"readability": {"resid_post": {"pruned": table}}}}}, "LOC"
    )
    text = page._repr_html_()
    assert "sign-free probe readability" in text and "max(AUC, 1 - AUC)" in text
    assert "· flipped" in text and "· at chance" in text


def test_lm_recovery_is_the_share_of_the_loss_rise_won_back():
    """A planted loss curve: base 4.0, 5.0 at the removal, then 4.5, 4.1, 4.3, 4.05 at steps
    2, 5, 8, 10: shares 0.5, 0.9, 0.7, 0.95 of the 1-nat rise by hand."""
    from types import SimpleNamespace

    from neuroplastic.analysis.one_run import _lm_scores

    steps, losses = [0, 2, 5, 8, 10], [5.0, 4.5, 4.1, 4.3, 4.05]
    metrics = pd.DataFrame(
        {
            "arm": "concept",
            "stage": ["pruned", "retrain-1@2", "retrain-1@5", "retrain-1@8", "retrain-1"],
            "step": steps,
            "lm_loss_concept": losses,
        }
    )
    entries = [
        SimpleNamespace(stage=stage, scores={"lm_loss": {"concept": c, "other": o}})
        for stage, c, o in (("base", 4.0, 3.0), ("pruned", 5.0, 3.2), ("retrain-1", 4.05, 3.1))
    ]
    scored = _lm_scores(metrics, "concept", entries)
    assert scored["drop_at_pruning"] == pytest.approx(1.0)
    assert scored["other_rise_at_pruning"] == pytest.approx(0.2)
    assert scored["specificity_at_pruning"] == pytest.approx(0.8)
    assert scored["curve"]["recovered"] == pytest.approx([0, 0.5, 0.9, 0.7, 0.95])
    assert scored["steps_to_recover_90"] == pytest.approx(5.0)  # first crossing
    # lasting: the last evaluation below 0.9 is step 8 (0.7), back above at 10 (0.95)
    assert scored["lasting_recovery_90"] == pytest.approx(8 + (0.9 - 0.7) / 0.25 * 2)
    assert scored["share_recovered_5"] == pytest.approx(0.9)
    assert scored["final_gap_to_base"] == pytest.approx(0.05)
    assert scored["drift_after_pruning"] == pytest.approx(0.95)
    # Perplexity up by under 10% (a rise under ln 1.1 = 0.0953 nats) has no share to
    # recover: undefined, not censored; 0.1 nats has one.
    for rise, defined in ((0.09, False), (0.1, True)):
        flat = metrics.assign(lm_loss_concept=[4.0 + rise, 4.0, 4.0, 4.0, 4.0])
        entries[1].scores["lm_loss"]["concept"] = 4.0 + rise
        still = _lm_scores(flat, "concept", entries)
        assert (still["recovery"] is not None) is defined
        assert math.isnan(still["steps_to_recover_90"]) is not defined
        assert still["drop_at_pruning"] == pytest.approx(rise)


def test_the_gap_to_the_control_cancels_what_retraining_does_to_both():
    """Both arms drift up by 0.1 nats a step; the concept arm starts 1 nat above its control
    and closes half of it by step 4, all by step 8: by hand 0.5 at 4, 1.0 at 8, 0.25 at 2."""
    control = {"step": [0, 4, 8], "lm_loss": [4.0, 4.4, 4.8]}
    treated = {"step": [0, 4, 8], "lm_loss": [5.0, 4.9, 4.8]}
    closed = [curves.control_gap_closed(treated, control, s, 0.1, "lm_loss") for s in (2, 4, 8)]
    assert closed == pytest.approx([0.25, 0.5, 1.0])
    # Past either curve's last evaluation, or with a gap under the minimum: undefined.
    assert math.isnan(curves.control_gap_closed(treated, control, 9, 0.1, "lm_loss"))
    small = {"step": [0, 4, 8], "lm_loss": [4.05, 4.4, 4.8]}
    assert math.isnan(curves.control_gap_closed(small, control, 4, 0.1, "lm_loss"))
