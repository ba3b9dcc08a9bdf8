"""The report's chase (``--rounds``) and pre-empt (``--preempt``) sections, read back from its
HTML tables and figures and checked against the run's summary.json and metrics.jsonl: a real
tiny chase run and a real tiny pre-empt run; an ordinary run has neither section."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_run import make_fake_run
from pages import _text, table

import neuroplastic.report.run_report as report_module
from neuroplastic.report.html import HtmlPage
from neuroplastic.report.run_report import build_report
from neuroplastic.store.rundir import RunDir, stage_round

CONCEPT = "LOC"
OTHERS = ("PER", "ORG", "MISC")


class _Capture(HtmlPage):
    """An HtmlPage that keeps the Plotly figures it is given."""

    figures: list = []

    def plotly(self, fig, **options):  # type: ignore[override]
        _Capture.figures.append(fig)
        return super().plotly(fig, **options)


def _report(run: RunDir, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list]:
    _Capture.figures = []
    monkeypatch.setattr(report_module, "HtmlPage", _Capture)
    html = build_report(run, n_views=0, similarity="none").to_html()
    return html, list(_Capture.figures)


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


@pytest.fixture
def chased(chase_run) -> RunDir:
    return RunDir(chase_run[0])


@pytest.fixture
def preempted(preempt_run) -> RunDir:
    return RunDir(preempt_run[0])


def test_chase_section_shows_every_round_as_the_summary_has_it(
    chased: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    html, figures = _report(chased, monkeypatch)
    summary = chased.summary()
    rounds = summary["chase"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    text = _text(html)
    assert "Chasing the concept" in text and "3 of 3 rounds ran." in text
    assert "one seed" in text and "neuroplastic sweep --rounds 3" in text
    # (a) recovery per round, per arm
    for record in rounds:
        shown = table(html, f"Round {record['round']}: recovery of {CONCEPT}")
        assert list(shown.index) == ["concept", "random"]
        for arm, entry in record["arms"].items():
            row = shown.loc[arm]
            # Measured against the model the round removed from: base, or the previous round.
            before = (
                summary["arms"][arm]["stages"][0]["f1"]
                if record["round"] == 1
                else rounds[record["round"] - 2]["arms"][arm]["retrained"]
            )
            assert entry["before"] == before
            assert entry["drop"] == pytest.approx(before[CONCEPT] - entry["removed"][CONCEPT])
            assert row[f"{CONCEPT} F1 before the removal"] == _f(before[CONCEPT])
            assert row[f"{CONCEPT} F1 after removal"] == _f(entry["removed"][CONCEPT])
            assert row[f"{CONCEPT} F1 after retraining"] == _f(entry["retrained"][CONCEPT])
            steps = entry["steps_to_recover"]
            assert row["steps to 90% of that"] == (
                "not reached"
                if steps is None
                else "0 (never below)"
                if steps == 0
                else f"{steps:.1f}"
            )
            assert row["recovery AUC"] == _f(entry["recovery_auc"])
            assert row["neurons added"] == str(entry["added"]) == "13"
            assert row["neurons held"] == str(entry["held"]) == str(13 * record["round"])
    # The curve: concept F1 at every evaluation of every round, a line at each round's start.
    [curve] = [f for f in figures if f.layout.xaxis.title.text == "training step (across rounds)"]
    metrics = chased.metrics()
    for trace in curve.data:
        arm = trace.name.removesuffix(" arm")
        rows = metrics[(metrics["arm"] == arm) & (metrics["stage"].map(stage_round) >= 1)]
        rows = rows.sort_values("step", kind="stable")
        assert list(trace.x) == rows["step"].tolist()
        assert list(trace.y) == pytest.approx(rows[f"f1_{CONCEPT}"].tolist())
    assert sorted(t.name for t in curve.data) == ["concept arm", "random arm"]
    lines = [s.x0 for s in curve.layout.shapes if s.x0 == s.x1]
    assert lines == [0, 6, 12]  # 2 stages x 3 steps per round
    # (b) collateral damage: the other types' F1 after each round's retraining, by neurons held
    collateral = table(html, "Other entity types' F1 after each round's retraining")
    base = summary["arms"]["concept"]["stages"][0]
    assert base["stage"] == "base"
    first, *rest = collateral.to_dict("records")
    assert first == {"round": "base", "arm": "–", "neurons held": "0"} | {
        f"{e} F1": _f(base["f1"][e]) for e in OTHERS
    }
    expected = [
        {"round": str(r["round"]), "arm": arm, "neurons held": str(entry["held"])}
        | {f"{e} F1": _f(entry["retrained"][e]) for e in OTHERS}
        for r in rounds
        for arm, entry in r["arms"].items()
    ]
    assert rest == expected
    [damage] = [f for f in figures if f.layout.xaxis.title.text == "neurons held"]
    assert len(damage.data) == 2 * len(OTHERS)
    concept_per = [t for t in damage.data if t.name == "concept arm"][0]  # first panel: PER
    assert list(concept_per.x) == [0, 13, 26, 39]
    assert list(concept_per.y) == pytest.approx(
        [base["f1"]["PER"], *(r["arms"]["concept"]["retrained"]["PER"] for r in rounds)]
    )
    # (c) the layers each round's new neurons came from
    layers = table(html, "Neurons added per layer, per round and arm")
    for row in layers.to_dict("records"):
        entry = rounds[int(row["round"]) - 1]["arms"][row["arm"]]
        assert {k: int(row[f"layer {k}"]) for k in ("0", "1")} == {
            k: entry["added_per_layer"].get(k, 0) for k in ("0", "1")
        }
        assert row["mean layer of the added"] == f"{entry['added_mean_layer']:.2f}"
        share = entry.get("already_salient_at_base")
        assert row["already salient at base"] == ("–" if share is None else f"{share:.0%}")
    assert len(layers) == 6
    assert "already, in the base model, among the most salient live neurons" in text


def test_preempt_section_shows_every_arm_and_the_paired_difference(
    preempted: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    html, figures = _report(preempted, monkeypatch)
    preempt = preempted.summary()["preempt"]
    text = _text(html)
    assert "Pre-empting the new home" in text
    assert f"{preempt['overlap']} of the 20 random survivors are also among the predicted" in text
    assert "as many in every layer as the preempt arm took there" in text
    assert "neuroplastic sweep --preempt gradient --preempt-count 20" in text
    shown = table(html, f"Recovery of {CONCEPT} in every arm")
    assert list(shown.index) == ["concept", "random", "preempt", "preempt-random", "preempt-oracle"]
    for arm, data in preempt["recovery"].items():
        steps = data["steps_to_recover_90"]
        assert shown.loc[arm, "steps to 90% of base"] == (
            "not reached" if steps is None else "0 (never below)" if steps == 0 else f"{steps:.1f}"
        )
        assert shown.loc[arm, "recovery AUC"] == _f(data["recovery_auc"])
        for entity in (CONCEPT, "overall", *OTHERS):
            assert shown.loc[arm, f"{entity} F1 pruned"] == _f(data["pruned"][entity])
            assert shown.loc[arm, f"{entity} F1 last"] == _f(data["last"][entity])
    difference = table(html, "Preempt arm minus its control")["preempt - preempt-random"]
    paired = preempt["preempt_minus_control"]
    assert difference["recovery AUC"] == f"{paired['recovery_auc']:+.3f}"
    for entity, value in paired["last"].items():
        assert difference[f"{entity} F1 last"] == f"{value:+.3f}"
        treated, control = (
            preempt["recovery"][a]["last"][entity] for a in ("preempt", "preempt-random")
        )
        assert value == pytest.approx(treated - control)
    # The rest of the report knows the new arms: colours, captions, the gap to their control.
    oracle = table(html, "Preempt arm minus its control")["preempt-oracle - preempt-random"]
    assert oracle["recovery AUC"] == f"{preempt['oracle_minus_control']['recovery_auc']:+.3f}"
    assert "of the oracle&#x27;s recovery-AUC change over random" in html or (
        "of the oracle's recovery-AUC change over random" in text
    )
    key = table(
        html,
        "Concept arm beside the random arm and the preempt and preempt-random and preempt-oracle "
        "arms",
    )
    assert list(key.columns) == ["concept", "random", "preempt", "preempt-random", "preempt-oracle"]
    assert "preempt arm (purple) and its control, the preempt-random arm (grey)" in text
    gaps = table(html, "gap to base")
    stages = {e["stage"]: e for e in preempted.summary()["arms"]["preempt"]["stages"]}
    for row in gaps.to_dict("records"):
        value = stages[row["stage"]]["gap_to_control"][row["entity"]]
        assert row["preempt arm gap to control"] == f"{value:+.3f}"
    colours = {t.line.color for f in figures for t in f.data if getattr(t, "line", None)}
    assert {"#9467bd", "#7f7f7f"} <= colours


def test_ordinary_run_has_neither_section(tmp_path: Path) -> None:
    fake = make_fake_run(tmp_path)
    text = _text(build_report(fake.run, top=6, n_views=0, similarity="none").to_html())
    assert "Chasing the concept" not in text and "Pre-empting the new home" not in text
    assert "pre-empt the concept's new home" not in text and "preempt arm" not in text
