"""The report's numbers, read back from its HTML tables and checked against the run's files:
a hand-made run with known answers (fake_run.py) and a real tiny-model run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_run import (
    ARM_LOC,
    BASE_LOC,
    BASE_TRAINING,
    PLANTED,
    RANDOM_ABLATED,
    SEEN_IN_TRAIN,
    STAGES,
    FakeRun,
    make_fake_run,
)
from pages import _text, table
from tiny import tiny_config

import neuroplastic.report.run_report as report_module
from neuroplastic.core.stats import NeuronStats
from neuroplastic.report.html import HtmlPage
from neuroplastic.report.run_report import build_report
from neuroplastic.report.style import DEAD_COLOR
from neuroplastic.store.rundir import RunDir

STAGE_TABLE = "Concept arm, per stage"
ARMS_TABLE = "Concept arm beside the random arm"
SEEN_TABLE = "Mentions seen in training"


# ---------------------------------------------------------------------------------------------
# The hand-made run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeRun:
    return make_fake_run(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="module")
def fake_html(fake: FakeRun) -> str:
    return build_report(fake.run, top=6, n_neurons=4, n_views=1, similarity="none").to_html()


def test_per_stage_scores_and_gaps_to_base_and_control(fake_html: str) -> None:
    stages = table(fake_html, STAGE_TABLE).set_index("stage")
    assert list(stages.index) == list(STAGES)
    base = BASE_LOC[0]
    concept = [base, *(ARM_LOC["concept"][s] for s in (0, 20, 40))]
    control = [base, *(ARM_LOC["random"][s] for s in (0, 20, 40))]
    assert stages["step"].tolist() == ["0", "0", "20", "40"]
    assert stages["LOC F1"].tolist() == [f"{v:.3f}" for v in concept]
    assert stages["random arm LOC F1"].tolist() == [f"{v:.3f}" for v in control]
    assert stages["LOC gap to base"].tolist() == [f"{v - base:+.3f}" for v in concept]
    assert stages["LOC gap to control"].tolist() == [
        f"{c - r:+.3f}" for c, r in zip(concept, control, strict=True)
    ]
    # The recovery looks complete against base (-0.04) but not against the control (-0.06).
    assert stages.loc["retrain-2", "LOC gap to control"] == "-0.060"


def test_key_numbers_of_the_planted_story(fake_html: str) -> None:
    arms = table(fake_html, ARMS_TABLE)
    assert arms.loc["neurons ablated"].tolist() == ["6", "6"]
    assert arms.loc["of them also in the concept set", "random"] == "0"
    # Of the concept arm's 3.00 → 1.00, the removal alone is -1.67 and relocation on the 90
    # survivors -0.33 (the top 6 of them: mean layer 1.33 when pruned, 1.00 at the end).
    relocation = [row for row in arms.index if row.startswith("relocation of the top 6")]
    assert "pruned → retrain-2" in relocation[0] and "90 neurons" in relocation[0]
    assert arms.loc[relocation[0]].tolist() == ["-0.33 layers", "+0.00 layers"]
    removal = [row for row in arms.index if row.startswith("shift of the top 6")]
    assert arms.loc[removal[0]].tolist() == ["-1.67 layers", "+0.00 layers"]
    poly = [row for row in arms.index if row.startswith("polysemantic neurons")]
    assert arms.loc[poly[0]].tolist() == ["2 → 8 of 84", "2 → 2 of 84"]
    assert arms.loc["ablated neurons alive at retrain-2"].tolist() == ["0 of 6", "0 of 6"]
    text = _text(fake_html)
    steps, stopped = BASE_TRAINING["steps"], BASE_TRAINING["stopped"]
    assert f"fine-tuned for {steps} steps, stopped: {stopped} (the loss on the probe" in text


def test_mentions_seen_in_training_per_entity_type(fake_html: str) -> None:
    seen = table(fake_html, SEEN_TABLE).set_index("entity type")
    for split in ("validation", "probe"):
        for entity, entry in SEEN_IN_TRAIN[f"{split}_seen_in_train"].items():
            assert seen.loc[entity, f"{split} mentions"] == str(entry["mentions"])
            assert seen.loc[entity, f"{split} seen in training"] == str(entry["seen"])
            assert seen.loc[entity, f"{split} share seen"] == f"{entry['share']:.1%}"
    assert "could be memory" in _text(fake_html)


def test_one_run_is_described_not_inferred(fake_html: str) -> None:
    text = _text(fake_html)
    assert "describes this one run" in text and "neuroplastic sweep" in text
    for interval in ("95%", "bootstrap", "ci_low", "ci_high", "p_value", "[95"):
        assert interval not in text, interval


def test_missing_summary_fields_say_not_recorded(fake: FakeRun, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(fake.path, old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["data"], summary["base"], summary["arms"]["random"]["overlap_with_concept"]
    for arm in summary["arms"].values():
        for entry in arm["stages"]:
            entry.pop("gap_to_base")
            entry.pop("gap_to_control", None)
    (old / "summary.json").write_text(json.dumps(summary))
    html = build_report(RunDir(old), top=6, n_views=0, similarity="none").to_html()
    stages = table(html, STAGE_TABLE).set_index("stage")
    assert stages["LOC F1"].tolist() == ["0.950", "0.050", "0.800", "0.910"]  # still shown
    assert set(stages["LOC gap to base"]) == set(stages["LOC gap to control"]) == {"not recorded"}
    assert table(html, ARMS_TABLE).loc["of them also in the concept set", "random"] == (
        "not recorded"
    )
    text = _text(html)
    assert "fine-tuning length and stopping rule not recorded" in text
    assert "Mentions seen in training: not recorded" in text


class _Capture(HtmlPage):
    """An HtmlPage that keeps the Plotly figures it is given."""

    figures: list = []

    def plotly(self, fig, **options):  # type: ignore[override]
        _Capture.figures.append(fig)
        return super().plotly(fig, **options)


def test_heatmaps_mask_dead_neurons_and_plots_carry_no_error_bars(
    fake: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Capture.figures = []
    monkeypatch.setattr(report_module, "HtmlPage", _Capture)
    build_report(fake.run, top=6, n_views=0, similarity="none")
    [heatmaps] = [f for f in _Capture.figures if any(t.type == "heatmap" for t in f.data)]
    traces = [t for t in heatmaps.data if t.type == "heatmap"]
    assert len(traces) == 2 * len(STAGES)  # arms x stages
    for index, trace in enumerate(traces):
        arm, stage = ("concept", "random")[index // len(STAGES)], STAGES[index % len(STAGES)]
        ablated = PLANTED if arm == "concept" else RANDOM_ABLATED
        z, neuron = np.asarray(trace.z, dtype=float), np.asarray(trace.customdata)
        rows, columns = np.nonzero(np.isnan(z))
        masked = {(int(r), int(neuron[r, c])) for r, c in zip(rows, columns, strict=True)}
        assert masked == (set() if stage == "base" else set(ablated)), (arm, stage)
        assert np.nanmin(z) == 0 and np.nanmax(z) == 1
    assert heatmaps.layout.plot_bgcolor == DEAD_COLOR
    for figure in _Capture.figures:
        for trace in figure.data:
            error = getattr(trace, "error_y", None)
            assert error is None or error.array is None, trace.name


# ---------------------------------------------------------------------------------------------
# A real run of a tiny model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    from neuroplastic.experiment.pipeline import run_experiment

    out = tmp_path_factory.mktemp("tiny-run")
    run_experiment(tiny_config(), out, progress=False, log=lambda *a: None)
    return RunDir(out)


def _hand_depth(path: Path, n_top: int, population: set | None = None) -> float:
    """The weighted mean layer of the ``n_top`` most salient live neurons of a stored ranking
    (of those in ``population``, pairs (layer, neuron), when given)."""
    frame = pd.read_parquet(path)
    if population is not None:
        pairs = zip(frame["layer"], frame["neuron"], strict=True)
        frame = frame[[pair in population for pair in pairs]]
    top = frame.dropna(subset=["rank"]).sort_values("rank", kind="stable").head(n_top)
    weights = 1 - np.arange(n_top) / n_top
    return float((top["layer"].to_numpy() * weights).sum() / weights.sum())


def test_report_of_a_real_run_matches_its_files(tiny_run: RunDir) -> None:
    html = build_report(tiny_run, n_views=1).to_html()
    summary = tiny_run.summary()
    concept = summary["config"]["concept"]
    # Scores and gaps per stage, as summary.json has them.
    stages = table(html, STAGE_TABLE).set_index("stage")
    arms = {arm: {e["stage"]: e for e in data["stages"]} for arm, data in summary["arms"].items()}
    assert list(stages.index) == list(arms["concept"])
    for stage, entry in arms["concept"].items():
        control = arms["random"][stage]
        for entity in (concept, "overall"):
            assert stages.loc[stage, f"{entity} F1"] == f"{entry['f1'][entity]:.3f}"
            assert stages.loc[stage, f"random arm {entity} F1"] == f"{control['f1'][entity]:.3f}"
            for gap in ("gap_to_base", "gap_to_control"):
                shown = stages.loc[stage, f"{entity} {gap.replace('_', ' ')}"]
                assert shown == f"{entry[gap][entity]:+.3f}"
    # The depth of the concept, by hand from ranking.parquet (top 10 of 2 x 64 neurons).
    n_total = len(pd.read_parquet(tiny_run.stage_dir("concept", "base") / "ranking.parquet"))
    n_top = max(10, round(0.01 * n_total))
    last = tiny_run.stages("concept")[-1]
    ranked = {
        s: tiny_run.stage_dir("concept", s) / "ranking.parquet" for s in ("base", "pruned", last)
    }
    removed = set(tiny_run.neurons("concept").neurons)
    population = None
    for stage in tiny_run.stages("concept"):
        frame = pd.read_parquet(tiny_run.stage_dir("concept", stage) / "ranking.parquet")
        live = frame.dropna(subset=["rank"])
        alive = set(zip(live["layer"], live["neuron"], strict=True))
        population = alive if population is None else population & alive
    population -= removed
    relocation = _hand_depth(ranked[last], n_top, population) - _hand_depth(
        ranked["pruned"], n_top, population
    )
    removal = _hand_depth(ranked["pruned"], n_top) - _hand_depth(ranked["base"], n_top)
    key = table(html, ARMS_TABLE)
    rows = {row.split(" (")[0]: row for row in key.index}
    moved = rows[f"relocation of the top {n_top} while retraining, pruned → {last}"]
    assert key.loc[moved, "concept"] == f"{relocation:+.2f} layers"
    assert f"{len(population)} neurons alive" in moved
    shift = rows[f"shift of the top {n_top} at the removal alone, base → pruned"]
    assert key.loc[shift, "concept"] == f"{removal:+.2f} layers"
    # The ablated neurons: as many as the neuron file lists, none alive in hold mode (their
    # statistics are exactly zero).
    ablated = tiny_run.neurons("concept")
    stats = NeuronStats.load(tiny_run.stage_dir("concept", last) / "stats.safetensors")
    alive = int((stats.sum_sq.sum(0)[ablated.mask()] > 0).sum())
    assert alive == 0
    assert key.loc[f"ablated neurons alive at {last}", "concept"] == f"{alive} of {len(ablated)}"
    assert key.loc["neurons ablated"].tolist() == [str(len(ablated))] * 2
    # And the dead are not ranked: NaN saliency in the stored ranking, exactly those neurons.
    frame = pd.read_parquet(tiny_run.stage_dir("concept", last) / "ranking.parquet")
    dead = frame[frame["saliency"].isna()]
    assert set(zip(dead["layer"], dead["neuron"], strict=True)) == set(ablated.neurons)
    live = frame["saliency"].dropna()
    assert live.min() == 0 and live.max() == 1
    assert live.mean() == pytest.approx(0.5, abs=1e-6)
    # The other summary fields, shown as recorded.
    base = summary["base"]
    assert f"fine-tuned for {base['steps']} steps, stopped: {base['stopped']} (" in _text(html)
    overlap = summary["arms"]["random"]["overlap_with_concept"]
    assert key.loc["of them also in the concept set", "random"] == str(overlap)
    shown = table(html, SEEN_TABLE).set_index("entity type")
    for split in ("validation", "probe"):
        for entity, entry in summary["data"][f"{split}_seen_in_train"].items():
            assert shown.loc[entity, f"{split} mentions"] == str(entry["mentions"])
            assert shown.loc[entity, f"{split} seen in training"] == str(entry["seen"])
            assert shown.loc[entity, f"{split} share seen"] == f"{entry['share']:.1%}"
