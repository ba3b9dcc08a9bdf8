"""Chase (``--rounds``, ``--stop-below``) and pre-empt (``--preempt``): the neuron sets against
independent recomputations, held neurons exactly zero in every round, the arms paired, the
stop, exact resumption at round boundaries, and a planted relocation pre-empted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kills import killed_then_resumed
from planted import CONCEPT, PLANTED
from tiny import TINY, tiny_config

import neuroplastic.experiment.pipeline as experiment
import neuroplastic.experiment.setup as experiment_setup
from neuroplastic.analysis.predict import Predictions, predict_at_pruned
from neuroplastic.cli.commands import _config, _parser
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment import chase
from neuroplastic.experiment.chase import next_concept_set, next_random_set, share_salient_at_base
from neuroplastic.experiment.preempt import preempt_sets
from neuroplastic.report.run_report import run_warnings
from neuroplastic.store.rundir import RunDir, round_stages, stage_key, stage_names, stage_round

ROUNDS = dict(rounds=3, eval_every=1)
N_ADDED = round(0.1 * 2 * 64)  # --fraction 0.1 of tiny-bert's 2 x 64 neurons, every round


def quiet(*_):
    pass


@pytest.fixture
def chased(chase_run):
    return chase_run


@pytest.fixture
def preempted(preempt_run):
    return preempt_run


# -- stage names -------------------------------------------------------------------------------
def test_stage_names_of_rounds():
    assert stage_names(2) == ["base", "pruned", "retrain-1", "retrain-2"]
    assert stage_names(2, rounds=2)[4:] == ["r2-pruned", "r2-retrain-1", "r2-retrain-2"]
    assert round_stages(1, 3) == ["r3-pruned", "r3-retrain-1"]
    names = stage_names(2, rounds=3)
    assert sorted(reversed(names), key=stage_key) == names
    assert [stage_round(n) for n in names] == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert stage_round("r2-retrain-1@5") == 2 and stage_round("retrain-1@5") == 1


# -- the sets, by hand ---------------------------------------------------------------------------
def test_next_concept_set_takes_the_next_most_salient_live_neurons():
    scores = torch.tensor([[9.0, 8.0, 7.0, 1.0], [6.0, 5.0, 4.0, 3.0]])
    alive = torch.tensor([[True, True, True, True], [True, False, True, True]])
    ranking = Ranking(CONCEPT, "probeless", scores, alive)
    held = NeuronSet.of(2, 4, [(0, 0), (0, 2)])
    # count 2: (0, 1) at 8, then (1, 0) at 6 ((1, 1) at 5 is dead, (0, 0) and (0, 2) held)
    grown = next_concept_set(held, ranking, tiny_config(selection="count", count=2))
    assert grown.neurons == ((0, 0), (0, 1), (0, 2), (1, 0))
    per_layer = next_concept_set(held, ranking, tiny_config(selection="per-layer", count=1))
    assert per_layer.neurons == ((0, 0), (0, 1), (0, 2), (1, 0))
    assert len(next_concept_set(held, ranking, tiny_config(selection="count", count=5))) == 7
    with pytest.raises(NeuroplasticError, match=r"outside the 2 held: cannot choose 6.*--rounds"):
        next_concept_set(held, ranking, tiny_config(selection="count", count=6))


def test_next_random_set_matches_the_concept_arms_additions():
    before = NeuronSet.of(2, 64, [(0, 1), (1, 1)])
    now = NeuronSet.of(2, 64, [(0, 1), (1, 1), (0, 2), (0, 3), (1, 4)])
    held = NeuronSet.of(2, 64, [(0, 10), (1, 10)])
    grown = next_random_set(held, before, now, seed=3)
    added = set(grown.neurons) - set(held.neurons)
    assert set(held.neurons) < set(grown.neurons)
    assert NeuronSet.of(2, 64, added).per_layer_counts() == {0: 2, 1: 1}
    assert not added & set(now.neurons)
    assert next_random_set(held, before, now, seed=3) == grown  # seeded
    total = next_random_set(held, before, now, seed=3, per_layer=False)
    assert len(total) == len(held) + 3 and not set(total.neurons) & set(now.neurons)
    crowded = NeuronSet.of(2, 64, [(0, n) for n in range(4, 64)])  # only 0 left
    with pytest.raises(NeuroplasticError, match=r"layer 0: .*added 2.*random-global"):
        next_random_set(crowded, before, now, seed=0)


def test_share_salient_at_base_by_hand():
    base = Ranking(CONCEPT, "probeless", torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    held = NeuronSet.of(1, 4, [(0, 0), (0, 1), (0, 3)])  # 3 held: base top 3 = 0, 1, 2
    added = NeuronSet.of(1, 4, [(0, 1), (0, 3)])
    assert share_salient_at_base(added, held, base) == 0.5
    assert math.isnan(share_salient_at_base(NeuronSet.of(1, 4, []), held, base))


# -- a chase, end to end -------------------------------------------------------------------------
def test_rounds_add_neurons_and_never_remove_any(chased):
    out, summary = chased
    run = RunDir(out)
    sets = [run.neurons("concept", r) for r in (1, 2, 3)]
    for earlier, later in zip(sets, sets[1:], strict=False):
        assert set(earlier.neurons) < set(later.neurons)
        assert len(later) - len(earlier) == N_ADDED
    for arm in ("concept", "random"):
        assert [s["stage"] for s in summary["arms"][arm]["stages"]] == stage_names(2, 3)
    for r in (2, 3):
        before = run.neurons("concept", r - 1)
        concept, random = run.neurons("concept", r), run.neurons("random", r)
        # A later round's control branches from the concept model of round r-1: it holds that
        # model's neurons plus as many random survivors per layer as the concept arm adds,
        # none of them the concept arm's own picks.
        assert set(before.neurons) < set(random.neurons)
        added = {
            arm: NeuronSet.of(2, 64, set(held.neurons) - set(before.neurons))
            for arm, held in (("concept", concept), ("random", random))
        }
        assert len(added["random"]) == N_ADDED
        assert added["concept"].per_layer_counts() == added["random"].per_layer_counts()
        assert added["random"].overlap(concept) == 0
        record = summary["chase"]["rounds"][r - 1]["arms"]["random"]
        assert record["overlap_with_concept"] == concept.overlap(random) == len(before)
        # Its F1 before the removal is the concept model's it branched from.
        concept_record = summary["chase"]["rounds"][r - 2]["arms"]["concept"]
        assert record["before"] == concept_record["retrained"]


def test_each_round_adds_the_top_of_the_last_rounds_ranking(chased):
    """Recomputed from the saved ranking with numpy: the most salient live neurons outside the
    held set, at the end of the last round."""
    out, _ = chased
    run = RunDir(out)
    for r in (2, 3):
        held = run.neurons("concept", r - 1)
        frame = run.stage("concept", round_stages(2, r - 1)[-1]).ranking.to_frame()
        frame = frame[np.isfinite(frame["score"])]
        frame = frame[
            [(a, b) not in held for a, b in zip(frame["layer"], frame["neuron"], strict=True)]
        ]
        # a stable sort by score: ties in index order, as the ranking orders them
        frame = frame.assign(index=frame["layer"] * 64 + frame["neuron"])
        top = frame.sort_values(["score", "index"], ascending=[False, True]).head(N_ADDED)
        expected = set(held.neurons) | set(zip(top["layer"], top["neuron"], strict=True))
        assert set(run.neurons("concept", r).neurons) == expected


def test_held_neurons_are_exactly_zero_in_every_round(chased):
    out, _ = chased
    run = RunDir(out)
    for arm in ("concept", "random"):
        for r in (1, 2, 3):
            mask = run.neurons(arm, r).mask()
            for stage in round_stages(2, r):
                stats = run.stage(arm, stage).stats
                assert (stats.sum[:, mask] == 0).all() and (stats.sum_sq[:, mask] == 0).all()
                assert (stats.top_values[mask] == 0).all()


def test_the_round_records_match_the_stages(chased):
    out, summary = chased
    run = RunDir(out)
    record = summary["chase"]
    assert record["rounds_run"] == 3 and record["stopped_early"] is None
    stages = {(a, s["stage"]): s for a, d in summary["arms"].items() for s in d["stages"]}
    base = run.stage("concept", "base").ranking
    for entry in record["rounds"]:
        r = entry["round"]
        first, last = round_stages(2, r)[0], round_stages(2, r)[-1]
        for arm, data in entry["arms"].items():
            assert data["removed"] == stages[arm, first]["f1"]
            assert data["retrained"] == stages[arm, last]["f1"]
            assert data["held"] == len(run.neurons(arm, r))
            assert data["added"] == (N_ADDED if r > 1 else len(run.neurons(arm, 1)))
            held = run.neurons(arm, r)
            # Every later round adds to the concept model of the round before (the control
            # branches from it).
            before = set(run.neurons("concept", r - 1).neurons) if r > 1 else set()
            added = set(held.neurons) - before
            assert data["added_mean_layer"] == pytest.approx(np.mean([a for a, _ in added]))
            if arm == "concept":
                top = set(base.top(len(held)))
                assert data["already_salient_at_base"] == pytest.approx(
                    len(added & top) / len(added)
                )
                # By chance: the share of the base's top among the neurons the round could add.
                alive = {tuple(p) for p in base.alive.nonzero().tolist()}
                assert data["already_salient_chance"] == pytest.approx(
                    len(top - before) / len(alive - before)
                )
    # Steps are global and increase through the rounds, 2 stages x 3 steps per round.
    steps = [s["step"] for s in summary["arms"]["concept"]["stages"]]
    assert steps == [0, 0, 3, 6, 6, 9, 12, 12, 15, 18]


def test_paired_arms_stay_identical_through_the_rounds(tmp_path, monkeypatch):
    """With the control forced to hold the concept arm's own neurons in every round, the arms
    are one computation: equal F1 at every stage (same batches, dropout and schedule)."""
    monkeypatch.setattr(NeuronSet, "random_matching", lambda self, seed=0: self)
    monkeypatch.setattr(experiment_setup, "next_random_set", lambda held, before, now, **_: now)
    summary = experiment.run_experiment(tiny_config(rounds=2), tmp_path, progress=False, log=quiet)
    concept, random = (summary["arms"][a]["stages"] for a in ("concept", "random"))
    assert [s["f1"] for s in concept] == [s["f1"] for s in random]


def test_stop_below_ends_the_chase_and_the_report_misses_nothing(tmp_path):
    config = tiny_config(rounds=3, stop_below=1.0)
    summary = experiment.run_experiment(config, tmp_path, progress=False, log=quiet)
    base = summary["arms"]["concept"]["stages"][0]["f1"][CONCEPT]
    after = {s["stage"]: s["f1"][CONCEPT] for s in summary["arms"]["concept"]["stages"]}
    # The first round whose retraining leaves the concept below 1.0 x base ends it.
    expected = next((r for r in (1, 2) if after[round_stages(2, r)[-1]] < base), 3)
    assert expected < 3  # the tiny model's LOC F1 falls in round 1: the stop is exercised
    assert summary["chase"]["rounds_run"] == expected
    assert "below --stop-below 1" in summary["chase"]["stopped_early"]
    for arm in ("concept", "random"):
        assert RunDir(tmp_path).stages(arm) == stage_names(2, expected)
    assert run_warnings(RunDir(tmp_path)) == []
    # Rerunning a finished, stopped chase changes nothing.
    assert experiment.run_experiment(config, tmp_path, progress=False, log=quiet) == summary


def test_a_round_no_control_can_match_stops_the_chase_with_every_result_kept(tmp_path, monkeypatch):
    # Planted: the control of round 3 cannot be drawn (as when the concept's rounds leave a
    # layer too few free neurons). The chase stops after round 2, before any of round 3's
    # training, and the run finishes with its summary instead of ending in an error.
    real = experiment_setup.next_random_set

    def crowded(held, before, now, seed, per_layer=True):
        if seed == 0 + 3:  # round 3's control (seeded with the run's seed + its round)
            raise chase.ControlCapacityError("layer 0: planted, 0 free")
        return real(held, before, now, seed=seed, per_layer=per_layer)

    monkeypatch.setattr(experiment_setup, "next_random_set", crowded)
    config = tiny_config(rounds=3)
    summary = experiment.run_experiment(config, tmp_path, progress=False, log=quiet)
    record = summary["chase"]
    assert record["rounds_run"] == 2
    assert record["stopped_early"].startswith("no random control can match round 3: layer 0")
    for arm in ("concept", "random"):
        assert RunDir(tmp_path).stages(arm) == stage_names(2, 2)
    # Resuming the finished run gives the same summary, the stop read back from its record.
    assert experiment.run_experiment(config, tmp_path, progress=False, log=quiet) == summary


@pytest.mark.slow  # kills and resumptions: several runs each
@pytest.mark.parametrize(
    "arm, stage, when",
    [
        ("concept", "r2-pruned", "before"),
        ("concept", "r2-pruned", "after-weights"),
        ("concept", "r2-retrain-1", "mid-training"),
        ("random", "r3-retrain-2", "after-weights"),
    ],
)
def test_resume_is_exact_at_round_boundaries(chased, tmp_path, monkeypatch, arm, stage, when):
    _, expected = chased
    resumed = killed_then_resumed(monkeypatch, tmp_path, tiny_config(**ROUNDS), arm, stage, when)
    assert resumed == expected


def test_the_one_shot_arm_holds_every_chased_neuron_from_base_at_once(chased):
    out, summary = chased
    run = RunDir(out)
    rounds = summary["chase"]["rounds_run"]
    union = run.neurons("concept", rounds) if rounds > 1 else run.neurons("concept")
    once = run.neurons("one-shot")
    assert once.neurons == union.neurons and len(once) == rounds * N_ADDED
    # One round from the base weights: its pruned stage is the base model with all of them
    # held, so every one of them is silent there, and it never runs a second round.
    assert run.stages("one-shot") == ["base", "pruned", "retrain-1", "retrain-2"]
    mask = once.mask()
    for stage in ("pruned", "retrain-2"):
        assert (run.stage("one-shot", stage).stats.sum[:, mask] == 0).all()
    one_shot = summary["chase"]["one_shot"]
    assert one_shot["neurons"] == len(once) and one_shot["rounds"] == rounds
    last = {e["stage"]: e["f1"] for e in summary["arms"]["one-shot"]["stages"]}
    chase_end = summary["arms"]["concept"]["stages"][-1]["f1"]
    for entity, value in one_shot["one_shot_minus_chase"].items():
        assert value == pytest.approx(last["retrain-2"][entity] - chase_end[entity])
    assert (
        one_shot["retraining_steps"]["chase"] == rounds * one_shot["retraining_steps"]["one_shot"]
    )
    # The chase's own rounds hold no one-shot record: it is not a round of the chase.
    assert all("one-shot" not in record["arms"] for record in summary["chase"]["rounds"])


# -- pre-empt ------------------------------------------------------------------------------------
def test_preempt_holds_exactly_the_requested_neurons(preempted):
    out, summary = preempted
    run = RunDir(out)
    concept = run.neurons("concept")
    scores = Predictions.load(out / "stages/concept/pruned/predictions.safetensors").scores
    gradient = scores["gradient"].double().numpy()
    flat = np.where(np.isfinite(gradient), gradient, -np.inf).ravel()
    top = np.argsort(-flat, kind="stable")[:20]
    expected = set(concept.neurons) | {divmod(int(i), 64) for i in top}
    assert set(run.neurons("preempt").neurons) == expected
    control = run.neurons("preempt-random")
    extra = set(control.neurons) - set(concept.neurons)
    assert len(control) == len(concept) + 20 and len(extra) == 20
    assert all(np.isfinite(gradient[a, b]) for a, b in extra)  # survivors the predictor scored
    predicted = NeuronSet.of(2, 64, expected - set(concept.neurons))
    assert NeuronSet.of(2, 64, extra).per_layer_counts() == predicted.per_layer_counts()
    assert summary["preempt"]["overlap"] == len(extra & set(predicted.neurons))
    for arm in ("preempt", "preempt-random"):
        mask = run.neurons(arm).mask()
        for stage in stage_names(2):
            if stage != "base":
                assert (run.stage(arm, stage).stats.sum[:, mask] == 0).all()
    recovery = summary["preempt"]["recovery"]
    difference = summary["preempt"]["preempt_minus_control"]
    assert difference["recovery_auc"] == pytest.approx(
        recovery["preempt"]["recovery_auc"] - recovery["preempt-random"]["recovery_auc"]
    )
    last = {a: summary["arms"][a]["stages"][-1]["f1"] for a in ("preempt", "preempt-random")}
    assert difference["last"] == {
        k: last["preempt"][k] - last["preempt-random"][k] for k in last["preempt"]
    }
    gaps = summary["arms"]["preempt"]["stages"][-1]["gap_to_control"]
    assert gaps == difference["last"]


def test_the_oracle_arm_holds_the_concept_arms_realised_top_gainers(preempted):
    out, summary = preempted
    run = RunDir(out)
    concept = run.neurons("concept")
    pruned, last = run.stage("concept", "pruned").ranking, run.stage("concept", "retrain-2").ranking
    # By hand: saliency gain from pruned to last among survivors alive at both, top 20.
    gain = (last.saliency.double() - pruned.saliency.double()).numpy()
    alive = (pruned.alive & last.alive & ~concept.mask()).numpy()
    flat = np.where(alive, gain, -np.inf).ravel()
    top = np.argsort(-flat, kind="stable")[:20]
    oracle = set(run.neurons("preempt-oracle").neurons) - set(concept.neurons)
    assert oracle == {divmod(int(i), 64) for i in top}
    mask = run.neurons("preempt-oracle").mask()
    assert (run.stage("preempt-oracle", "retrain-2").stats.sum[:, mask] == 0).all()
    preempt = summary["preempt"]
    recovery = preempt["recovery"]
    bound = preempt["oracle_minus_control"]["recovery_auc"]
    assert bound == pytest.approx(
        recovery["preempt-oracle"]["recovery_auc"] - recovery["preempt-random"]["recovery_auc"]
    )
    bought = preempt["preempt_minus_control"]["recovery_auc"]
    assert preempt["share_of_oracle"] == (pytest.approx(bought / bound) if bound else None)
    predicted = set(run.neurons("preempt").neurons) - set(concept.neurons)
    assert preempt["oracle_overlap"] == len(predicted & oracle)


def test_preempt_oracle_holds_the_gainers_in_the_preempt_arm_itself():
    config = tiny_config(preempt="oracle", preempt_count=20)
    assert config.arms == ("concept", "random", "preempt", "preempt-random")
    assert "preempt-oracle" in tiny_config(preempt="gradient").arms
    with pytest.raises(NeuroplasticError, match="preempt must be one of .*oracle"):
        tiny_config(preempt="hindsight")


def test_preempt_takes_a_planted_relocation(planted):  # noqa: F811
    """On the planted fixture the gradient predictor scores the planted neurons, and only them,
    above zero: pre-empting 8 holds exactly them; its control draws as many per layer."""
    module, data, removed, pruned, _, planted_mask = planted
    predictions = predict_at_pruned(module, data, CONCEPT, pruned, removed, seed=0)
    sets = preempt_sets(removed, predictions, "gradient", len(PLANTED), seed=0)
    assert set(sets["preempt"].neurons) == set(removed.neurons) | set(PLANTED)
    extra = NeuronSet.of(2, 64, set(sets["preempt-random"].neurons) - set(removed.neurons))
    assert extra.per_layer_counts() == NeuronSet.of(2, 64, PLANTED).per_layer_counts()
    assert not set(extra.neurons) & set(removed.neurons)
    with pytest.raises(NeuroplasticError, match="63 is more than half of the 124.*62 or less"):
        preempt_sets(removed, predictions, "gradient", 63, seed=0)
    held = preempt_sets(removed, predictions, "gradient", 62, seed=0)["preempt"]
    assert len(held) == len(removed) + 62
    with pytest.raises(NeuroplasticError, match="no 'similarity' scores"):
        preempt_sets(removed, predictions, "similarity", 5, seed=0)


# -- settings ----------------------------------------------------------------------------------
def test_the_command_line_takes_the_chase_and_preempt_flags():
    args = _parser().parse_args(["run", "--out", "x", "--rounds", "3", "--stop-below", "0.5"])
    config = _config(args)
    assert (config.rounds, config.stop_below) == (3, 0.5)
    args = _parser().parse_args(
        ["sweep", "--out", "x", "--seeds", "0,1", "--preempt", "gradient", "--preempt-count", "50"]
    )
    config = _config(args, lists=("mode", "method"))
    assert (config.preempt, config.preempt_count) == ("gradient", 50)
    assert config.arms == ("concept", "random", "preempt", "preempt-random", "preempt-oracle")
    args = _parser().parse_args(["run", "--out", "x", "--preempt", "oracle"])
    assert _config(args).preempt == "oracle"
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--out", "x", "--preempt", "hindsight"])


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(rounds=0), "rounds must be positive; got 0"),
        (dict(preempt="gradient", preempt_count=0), "preempt_count must be positive; got 0"),
        (dict(stop_below=0.5), "give --rounds 2 or more"),
        (dict(rounds=2, stop_below=1.5), r"stop_below must be in \[0, 1\] \(a share"),
        (dict(rounds=2, mode="regrow"), "needs --mode hold"),
        (dict(rounds=2, task="lm", model="tiny-gpt2"), "needs --task ner"),
        (dict(rounds=2, preempt="gradient"), "separate experiments"),
        # A count for a pre-emption that is not asked for is refused, not ignored.
        (dict(preempt_count=5), "--preempt is not given"),
    ],
)
def test_bad_chase_settings_are_explained(settings, message):
    with pytest.raises(NeuroplasticError, match=message):
        tiny_config(**settings)


def test_defaults_leave_older_runs_identity_unchanged():
    config = tiny_config()
    assert not {"rounds", "stop_below", "preempt", "preempt_count"} & set(config.identity())
    assert "rounds" in tiny_config(rounds=2).identity()
    assert TINY["stages"] == 2 and chase.__doc__


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(rounds=11), r"--rounds 11 holds 13 more neurons each round, 143 in all.*128"),
        # 9 x 13 = 117 fit in 128, but not with round 9's control of 13 more outside them.
        (dict(rounds=9), r"and the last round's control 13 more.*give --rounds 8 or less"),
        (dict(rounds=9, baseline="none"), None),
        (dict(preempt="random", preempt_count=120), r"more than half of the 115.*57 or less"),
        # 58 of 115 survivors: the two pre-emption arms would share most of their neurons.
        (dict(preempt="random", preempt_count=58), r"mostly the same neurons.*57 or less"),
    ],
)
def test_sets_larger_than_the_model_are_refused_before_training(
    tmp_path, monkeypatch, settings, message
):
    if message is None:  # accepted: stop it at its first training step

        def stop(*_, **__):
            raise RuntimeError("accepted")

        monkeypatch.setattr(experiment, "_train_to_plateau", stop)
        with pytest.raises(RuntimeError, match="accepted"):
            experiment.run_experiment(tiny_config(**settings), tmp_path, progress=False, log=quiet)
        return
    with pytest.raises(NeuroplasticError, match=message):
        experiment.run_experiment(tiny_config(**settings), tmp_path, progress=False, log=quiet)
    assert not (tmp_path / "state").exists()  # refused before any training
