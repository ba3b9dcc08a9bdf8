"""The retrainer's choices: ``neuroplastic sweep --grid`` and its best case per axis."""

import argparse

import pytest
from tiny import TINY

import neuroplastic.experiment.sweep as sweep
import neuroplastic.experiment.sweep_plan as sweep_plan
from neuroplastic.analysis.intervals import as_text
from neuroplastic.cli.commands import _grid_axis, main
from neuroplastic.config import ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.report.sweep_report import build_sweep_report
from neuroplastic.store.rundir import RunDir

# Long enough for a non-zero LOC F1, evaluated every 2 retraining steps (as test_sweep's).
GRIDDED = dict(
    TINY, base_steps=40, plateau_every=0, stage_steps=4, learning_rate=1e-2, eval_every=2
)


def quiet(*_):
    pass


def test_a_grid_axis_is_typed_as_its_setting():
    assert _grid_axis("relearn-lr=1e-5, 1e-4") == ("relearn_lr", [1e-5, 1e-4])
    assert _grid_axis("relearn_sentences=8,32") == ("relearn_sentences", [8, 32])
    assert _grid_axis("naive=true,False") == ("naive", [True, False])
    assert _grid_axis("preempt=none,gradient") == ("preempt", [None, "gradient"])
    assert _grid_axis("relearn=same,masked") == ("relearn", ["same", "masked"])
    for bad, message in [
        ("relearn_lr", "give SETTING=V1,V2"),
        ("colour=1,2", "SETTING one of"),
        ("relearn_lr=fast", "not a float"),
        ("naive=yes", "true or false"),
        ("stages=", "no values"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            _grid_axis(bad)


def test_grid_points_are_every_combination_first_axis_slowest():
    points = sweep_plan.grid_points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert points == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    assert sweep_plan.grid_points(None) == [{}]
    assert sweep_plan.cell_name("hold", "selectivity", {"relearn_lr": 0.001}) == (
        "hold-selectivity_relearn_lr=0.001"
    )
    assert sweep_plan.cell_name("hold", "selectivity") == "hold-selectivity"  # old sweeps resume


def test_every_cell_is_checked_before_the_first_run(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a run started before every cell was checked")

    monkeypatch.setattr(sweep, "run_experiment", must_not_run)
    with pytest.raises(NeuroplasticError, match="fraction must be in"):
        sweep.run_sweep(
            ExperimentConfig(**GRIDDED), tmp_path / "s", seeds=[0], grid={"fraction": [0.1, 2.0]},
            progress=False, log=quiet,
        )  # fmt: skip
    for key, hint in (("seed", "--seeds"), ("method", "--method"), ("device", "output option")):
        with pytest.raises(NeuroplasticError, match=hint):
            sweep.run_sweep(
                ExperimentConfig(**GRIDDED), tmp_path / "s", seeds=[0], grid={key: ["a", "b"]},
                progress=False, log=quiet,
            )  # fmt: skip
    with pytest.raises(NeuroplasticError, match="distinct values"):
        sweep.run_sweep(
            ExperimentConfig(**GRIDDED), tmp_path / "s", seeds=[0], grid={"stages": [2, 2]},
            progress=False, log=quiet,
        )  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_the_command_line_spells_mode_as_a_grid_axis_too(tmp_path, capsys):
    code = main(
        ["sweep", "--out", str(tmp_path / "s"), "--seeds", "0", "--mode", "hold",
         "--grid", "mode=regrow", "--quiet", "--no-report"]
    )  # fmt: skip
    assert code == 2 and "not both" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gridded(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    result = sweep.run_sweep(
        ExperimentConfig(**GRIDDED), out, seeds=[0, 1], grid={"relearn_lr": [1e-3, 3e-2]},
        progress=False, log=quiet,
    )  # fmt: skip
    return out, result


@pytest.mark.slow  # a grid of four tiny runs
def test_a_grid_runs_every_point_and_names_the_best_case_per_seed(gridded, tmp_path):
    out, result = gridded
    cells = ["hold-selectivity_relearn_lr=0.001", "hold-selectivity_relearn_lr=0.03"]
    assert list(result["cells"]) == cells
    assert result["settings"][cells[1]] == {
        "mode": "hold", "method": "selectivity", "relearn_lr": 0.03,
    }  # fmt: skip
    for cell, rate in zip(cells, (1e-3, 3e-2), strict=True):
        for seed in (0, 1):
            config = RunDir(out / cell / f"seed-{seed}").config()
            assert config["relearn_lr"] == rate and config["learning_rate"] == 1e-2
    # The base model is the same at every point of a retraining axis.
    bases = {
        cell: RunDir(out / cell / "seed-0").summary()["arms"]["concept"]["stages"][0]["f1"]
        for cell in cells
    }
    assert bases[cells[0]] == bases[cells[1]]
    # The best case, by hand from each run's own measures.
    (case,) = result["best_case"]["relearn_lr"]
    assert case["values"] == [1e-3, 3e-2] and case["fixed"] == {
        "mode": "hold", "method": "selectivity",
    }  # fmt: skip
    finals, steps = [], []
    for seed in (0, 1):
        per_cell = {
            c: sweep.run_measures(out / c / f"seed-{seed}")["arms"]["concept"] for c in cells
        }
        last = {c: list(a["f1"].values())[-1]["LOC"] for c, a in per_cell.items()}
        best = max(last, key=last.get)
        finals.append(last[best])
        assert case["highest_value"][seed] == result["settings"][best]["relearn_lr"]
        reached = {
            c: a["lasting_recovery_90"]
            for c, a in per_cell.items()
            if a["lasting_recovery_90"] is not None
        }
        steps.append(min(reached.values()) if reached else None)
    assert case["highest_final_f1"]["values"] == pytest.approx(finals)
    if all(s is not None for s in steps):
        assert case["fastest_recovery"]["mean"] == pytest.approx(sum(steps) / 2)
    # Along the axis: the paired difference of each measure, per seed by hand.
    (along,) = result["along_axis"]["relearn_lr"]
    assert along["cells"] == cells and along["seeds"] == [0, 1]
    for measure in ("drop_at_pruning", "recovery_auc"):
        by_hand = [
            sweep.run_measures(out / cells[1] / f"seed-{seed}")["arms"]["concept"][measure]
            - sweep.run_measures(out / cells[0] / f"seed-{seed}")["arms"]["concept"][measure]
            for seed in (0, 1)
        ]
        assert along["arms"]["concept"][measure]["values"] == pytest.approx(by_hand)
    # The base is shared: the rate cannot change the drop at pruning.
    assert along["arms"]["concept"]["drop_at_pruning"]["values"] == pytest.approx([0.0, 0.0])
    page = build_sweep_report(result).write(tmp_path / "report.html").read_text()
    assert "The retrainer&#x27;s choices" in page or "The retrainer's choices" in page
    assert "relearn_lr=0.03 minus relearn_lr=0.001" in page


def test_best_cases_by_hand_with_a_censored_seed():
    def run(concept, steps, last, budget=8.0):
        return {
            "concept": concept,
            "arms": {
                "concept": {
                    "lasting_recovery_90": steps,
                    "recovery": {"budget": budget},
                    "f1": {"base": {"LOC": 0.9}, "retrain-2": {"LOC": last}},
                }
            },
        }

    settings = {"a": {"mode": "hold", "lr": 1}, "b": {"mode": "hold", "lr": 2}}
    measured = {
        "a": {0: run("LOC", 3.0, 0.80), 1: run("LOC", None, 0.60)},
        "b": {0: run("LOC", 5.0, 0.85), 1: run("LOC", None, 0.70)},
    }
    (case,) = sweep.best_cases(measured, settings, "lr")
    assert case["fastest_value"] == [1, None] and case["highest_value"] == [2, 2]
    assert case["highest_final_f1"]["mean"] == pytest.approx((0.85 + 0.70) / 2)
    # Seed 1 never recovered at either rate: censored at the budget, a lower bound.
    assert case["fastest_recovery"]["censored"] == 1
    assert case["fastest_recovery"]["lower_bound"] == pytest.approx((3.0 + 8.0) / 2)


def test_a_grid_value_never_puts_a_cell_outside_the_sweep():
    """A dataset path as a grid value is one directory name, its separators encoded; two values
    that would name one directory are refused before anything runs."""
    config = ExperimentConfig(**TINY)
    plan = sweep_plan.plan_sweep(config, [0], grid={"dataset": ["../../data/x", "data\\y"]})
    cells = [cell for cell, _, _ in plan.runs]
    assert cells == [
        "hold-selectivity_dataset=..%2F..%2Fdata%2Fx",
        "hold-selectivity_dataset=data%5Cy",
    ]
    assert all("/" not in cell and "\\" not in cell for cell in cells)
    assert plan.runs[0][2].dataset == "../../data/x"  # the run itself gets the value as given
    with pytest.raises(NeuroplasticError, match="would share the directory"):
        sweep_plan.plan_sweep(config, [0], grid={"relearn_sentences": [8, "8"]})


def test_a_faster_cell_may_hide_behind_a_shorter_budget():
    """Seed 0: cell b never got there within 2 steps, fewer than a's 3: the fastest is only
    known to be at least 2, never a's 3."""

    def run(steps, budget):
        arm = {"lasting_recovery_90": steps, "recovery": {"budget": budget}}
        return {"concept": "LOC", "arms": {"concept": {**arm, "f1": {"base": {"LOC": 0.9}}}}}

    settings = {"a": {"mode": "hold", "steps": 8}, "b": {"mode": "hold", "steps": 2}}
    measured = {
        "a": {0: run(3.0, 8.0), 1: run(1.0, 8.0)},
        "b": {0: run(None, 2.0), 1: run(None, 2.0)},
    }
    (case,) = sweep.best_cases(measured, settings, "steps")
    assert case["fastest_value"] == [None, 8]
    assert case["fastest_recovery"]["at_least"] == [2.0, None]
    assert case["fastest_recovery"]["lower_bound"] == pytest.approx((2.0 + 1.0) / 2)


def test_paired_steps_bound_each_seed_the_way_its_censoring_points():
    """Budget 100. Treated 10, 12, 11, 9; the control never recovered in seeds 0 and 1 (30
    and 40 steps in seeds 2, 3 mean -25 over those two alone): the differences are at most
    -90 and -88, so the mean is at most (-90 - 88 - 29 - 21) / 4 = -57, never -25."""

    def arm(steps):
        return {"steps_to_recover_90": steps, "recovery": {"budget": 100.0}}

    treated = [arm(10.0), arm(12.0), arm(11.0), arm(9.0)]
    control = [arm(None), arm(None), arm(40.0), arm(30.0)]
    result = sweep._paired_across("steps_to_recover_90", treated, control)
    assert result["at_most"] == [-90.0, -88.0, None, None]
    assert result["upper_bound"] == pytest.approx(-57.0) and result["mean"] is None
    assert as_text(result).startswith("≤ -57 (reached by 2 of 4 seeds; 2 censored")
    # Both arms censored in a seed: it bounds nothing, and the mean is undetermined.
    both = sweep._paired_across("steps_to_recover_90", [arm(None), *treated[1:]], control)
    assert both["method"] == "undetermined" and both["undetermined"] == 1
    # Nothing censored: the paired test, with its power and the equivalence margin.
    plain = sweep._paired_across("steps_to_recover_90", treated, [arm(12.0)] * 4)
    assert plain["mean"] == pytest.approx(-1.5) and plain["detectable_80"] is not None
    assert plain["equivalence"]["margin"] == sweep.MARGINS["steps_to_recover_90"]


def test_axis_differences_pair_each_value_with_the_first_per_seed():
    def arm(drop, steps, base, budget=8.0):
        return {
            **{m: 0.0 for m in sweep.MEASURES},
            "drop_at_pruning": drop,
            "steps_to_recover_90": steps,
            "recovery": {"budget": budget},
            "f1": {"base": {"LOC": base, "overall": 0.5}, "pruned": {"LOC": base - drop}},
        }

    def run(*concept, base_steps=500):
        arms = {"concept": arm(*concept), "random": arm(0.01, 1.0, 0.9)}
        return {"base": {"steps": base_steps, "stopped": "plateau"}, "arms": arms}

    settings = {
        "a": {"mode": "hold", "group": 0},
        "b": {"mode": "hold", "group": 50},
        "c": {"mode": "regrow", "group": 0},  # alone in its group: nothing to pair with
    }
    measured = {
        "a": {0: run(0.90, 5.0, 0.97), 1: run(0.80, 6.0, 0.95), 2: run(0.85, 5.5, 0.96)},
        "b": {
            0: run(0.86, 5.5, 0.95, base_steps=450),
            1: run(0.78, None, 0.94),
            3: run(0.1, 1.0, 0.5),
        },
        "c": {0: run(0.5, 1.0, 0.5)},
    }
    (case,) = sweep.axis_differences(measured, settings, "group")
    assert (case["reference"], case["value"], case["cells"]) == (0, 50, ["a", "b"])
    assert case["fixed"] == {"mode": "hold"} and case["seeds"] == [0, 1]  # the seeds both have
    assert case["base_steps"]["values"] == [-50.0, 0.0]
    concept = case["arms"]["concept"]
    # By hand: b - a per seed is -0.04 and -0.02; mean -0.03, sd 0.01414, t(0.975, 1) = 12.706.
    drop = concept["drop_at_pruning"]
    assert drop["values"] == pytest.approx([-0.04, -0.02])
    assert drop["mean"] == pytest.approx(-0.03)
    assert drop["ci_high"] - drop["mean"] == pytest.approx(12.7062 * 0.0141421 / 2**0.5, rel=1e-4)
    assert drop["equivalence"]["margin"] == sweep.MARGINS["drop_at_pruning"]
    assert concept["f1"]["base"]["LOC"]["values"] == pytest.approx([-0.02, -0.01])
    assert concept["f1"]["pruned"]["LOC"]["values"] == pytest.approx([0.02, 0.01])
    # Seed 1 of b never recovered within its budget of 8: its difference is at least 8 - 6.
    steps = concept["steps_to_recover_90"]
    assert steps["censored"] == 1 and steps["at_least"] == [None, 2.0]
    assert steps["lower_bound"] == pytest.approx((0.5 + 2.0) / 2)
    assert case["arms"]["random"]["drop_at_pruning"]["values"] == pytest.approx([0.0, 0.0])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"seeds": [0, -1]}, "seed must be in"),
        ({"seeds": [0], "modes": ["hold", "regrow"], "rounds": 2}, "needs --mode hold"),
    ],
)
def test_a_sweep_refuses_a_bad_later_cell_before_its_first_run(
    tmp_path, monkeypatch, settings, message
):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the first cell ran before a later one was checked")

    monkeypatch.setattr(sweep, "run_experiment", must_not_run)
    base = ExperimentConfig(**{**GRIDDED, "rounds": settings.pop("rounds", 1)})
    with pytest.raises(NeuroplasticError, match=message):
        sweep.run_sweep(base, tmp_path / "s", progress=False, log=quiet, **settings)


@pytest.mark.slow  # a two-cell sweep
def test_only_finished_aggregates_what_has_run_and_runs_nothing(tmp_path, monkeypatch):
    config = ExperimentConfig(**GRIDDED)
    grid = {"relearn_lr": [1e-3, 1e-2]}
    done = sweep.run_sweep(config, tmp_path / "s", seeds=[0], grid=grid, progress=False, log=quiet)

    def must_not_run(*args, **kwargs):
        raise AssertionError("--only-finished ran a run")

    monkeypatch.setattr(sweep, "run_experiment", must_not_run)
    partial = sweep.run_sweep(
        config, tmp_path / "s", seeds=[0, 1], grid=grid, progress=False, log=quiet,
        only_finished=True,
    )  # fmt: skip
    cells = ["hold-selectivity_relearn_lr=0.001", "hold-selectivity_relearn_lr=0.01"]
    assert partial["incomplete"] == {cell: [1] for cell in cells}
    assert partial["cells"] == done["cells"]  # seed 0's runs, aggregated as before
    html = build_sweep_report(partial).to_html()
    assert f"Incomplete: {cells[0]} lacks seeds [1]" in html
    with pytest.raises(NeuroplasticError, match="no run of this sweep has finished yet"):
        sweep.run_sweep(
            config, tmp_path / "empty", seeds=[0], progress=False, log=quiet, only_finished=True
        )
