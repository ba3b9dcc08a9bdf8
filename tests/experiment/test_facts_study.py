"""The facts study (neuroplastic.experiment.facts_study): its losses against hand computations,
its measures on planted scores, arms that differ in the removal only, a removal that holds while
retraining, resumption, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from neuroplastic.analysis.facts_measures import MIN_DROP, aggregate, seed_measures
from neuroplastic.core.fact_scores import _encoder
from neuroplastic.core.models import mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.experiment.facts_scoring import Scores, answer_loss, general_loss
from neuroplastic.experiment.facts_states import _retrain, no_removal, run_states, states_of
from neuroplastic.experiment.facts_study import run_facts_seed, write_study
from neuroplastic.facts_config import RELATIONS, FactsConfig

CLI = [sys.executable, "-c", "from neuroplastic.cli.commands import main; raise SystemExit(main())"]
SMALL = dict(model="tiny-llama", max_facts=12, steps=3, retain_questions=8, general_sentences=8)


def test_run_points_a_facts_dataset_to_the_facts_command():
    from neuroplastic.config import ExperimentConfig

    with pytest.raises(NeuroplasticError, match="neuroplastic facts --out DIR"):
        ExperimentConfig(dataset="facts")


def test_the_torch_free_relations_are_the_data_layers():
    from neuroplastic.data.facts import RELATIONS as DATA_RELATIONS

    assert RELATIONS == DATA_RELATIONS


@pytest.fixture(scope="module")
def study(tiny_llama, tmp_path_factory):
    config = FactsConfig(**SMALL, protocols=("heldout", "unrelated"))
    root = tmp_path_factory.mktemp("facts")
    return config, root, StudyData(tiny_llama, config, root)


def test_answer_loss_is_the_answers_cross_entropy(tiny_llama, study):
    _, _, data = study
    batch = data.train["heldout"].collate([0, 1])
    with torch.no_grad():
        got = answer_loss(tiny_llama, batch)
    # By hand: each sentence alone, the log-probability of its answer's tokens after its prompt.
    encode = _encoder(tiny_llama.tokenizer)
    total, count = 0.0, 0
    for index in (0, 1):
        sentence = data.train["heldout"].sentences[index]
        first_answer = sentence.tags.index("B-FORGET")
        prompt, answer = (
            " ".join(sentence.words[:first_answer]),
            " ".join(sentence.words[first_answer:]),
        )
        encoded = encode(prompt, answer)
        tokens = torch.tensor([encoded.ids])
        with torch.no_grad():
            log_probs = tiny_llama(tokens, return_type="logits")[0].log_softmax(-1)
        for position in range(encoded.continuation_start, len(encoded.ids)):
            total -= float(log_probs[position - 1, encoded.ids[position]])
            count += 1
    assert float(got) == pytest.approx(total / count, rel=1e-4)


def test_general_loss_weighs_every_token_once(tiny_llama, study):
    _, _, data = study
    total, count = 0.0, 0
    for encoded in data.general.encoded:
        tokens = torch.tensor([encoded.token_ids])
        with torch.no_grad():
            logits = tiny_llama(tokens, return_type="logits")[0]
        losses = torch.nn.functional.cross_entropy(logits[:-1], tokens[0, 1:], reduction="sum")
        total, count = total + float(losses), count + len(encoded.token_ids) - 1
    assert general_loss(tiny_llama, data.general) == pytest.approx(total / count, rel=1e-4)


def _state(v: float, t: float = 1.0, retain: float = 1.0, loss: float = 2.0, greedy=None):
    def part(value):
        return {"n": 10, "multiple_choice": value, "greedy": value if greedy is None else greedy}

    return {"forget_v": part(v), "forget_t": part(t), "retain": part(retain), "general_loss": loss}


def test_measures_on_planted_scores():
    states = {
        "base": _state(1.0, loss=2.0),
        "removal": _state(0.4, t=0.5, retain=0.9, loss=2.3),
        "control": _state(0.95, retain=1.0, loss=2.05),
        "heldout/removal": _state(0.7),
        "heldout/control": _state(0.98),
        "heldout/none": _state(1.0),
        "unrelated/removal": _state(0.55),
        "unrelated/control": _state(0.95),
        "unrelated/none": _state(0.9),  # retraining alone costs V 0.1
    }
    m = seed_measures(states, ["heldout", "unrelated"])
    assert m["removal_drop_v"] == pytest.approx(0.6)
    assert m["removal_drop_t"] == pytest.approx(0.5)
    assert m["removal_drop_retain"] == pytest.approx(0.1)
    assert m["removal_specificity"] == pytest.approx(0.5)
    assert m["drop_v_vs_control"] == pytest.approx(0.55)
    assert m["removal_general_damage"] == pytest.approx(0.3)
    # (0.7 - 0.4) / (1 - 0.4) = 0.5; net of the no-removal arm's gain (0): the same.
    assert m["heldout_removal_recovered"] == pytest.approx(0.5)
    assert m["heldout_removal_recovered_net"] == pytest.approx(0.5)
    assert m["heldout_gap_to_control"] == pytest.approx(-0.28)
    # (0.55 - 0.4) / 0.6 = 0.25; net: the none arm lost 0.1, so + 0.1 / 0.6.
    assert m["unrelated_removal_recovered"] == pytest.approx(0.25)
    assert m["unrelated_removal_recovered_net"] == pytest.approx(0.25 + 0.1 / 0.6)
    assert m["unrelated_none_gain"] == pytest.approx(-0.1)
    # The control dropped 0.05 < MIN_DROP: its recovery is no share, not a number.
    assert 0.05 < MIN_DROP and m["heldout_control_recovered"] is None
    across = aggregate([{"measures": m}, {"measures": {**m, "removal_drop_v": 0.4}}])
    assert across["removal_drop_v"]["mean"] == pytest.approx(0.5)
    assert across["removal_drop_v"]["n"] == 2
    assert "detectable_80" in across["drop_v_vs_control"]  # paired measures are paired


def test_the_best_case_is_each_arms_highest_v_over_the_rates():
    states = {
        "base": _state(1.0),
        "removal": _state(0.4),
        "control": _state(0.9),
        "heldout/removal": _state(0.5),
        "heldout/control": _state(0.9),
        "heldout/none": _state(1.0),
        "heldout@0.0001/removal": _state(0.8),
        "heldout@0.0001/control": _state(0.85),
        "heldout@0.0001/none": _state(0.95),
    }
    m = seed_measures(states, ["heldout"], ["@0.0001"])
    assert m["heldout_removal_recovered"] == pytest.approx(0.1 / 0.6)  # the main rate's
    assert m["heldout_best_removal_v"] == 0.8 and m["heldout_best_removal_retrainer_index"] == 1
    assert m["heldout_best_removal_recovered"] == pytest.approx(0.4 / 0.6)
    assert m["heldout_best_control_v"] == 0.9 and m["heldout_best_control_retrainer_index"] == 0
    assert m["heldout_best_none_v"] == 1.0


@pytest.mark.slow
def test_best_case_rates_retrain_every_arm_again(tiny_llama, study, tmp_path):
    config, _, data = study
    graded = replace(config, protocols=("heldout",), best_case_lrs=(1e-2,))
    scores = Scores(tmp_path / "scores.jsonl")
    run_states(tiny_llama, data, graded, {"removal": no_removal, "control": no_removal}, scores)
    assert list(scores.states) == states_of(("heldout",), ("", "@0.01"))
    assert "heldout@0.01/removal" in scores.states
    # Another rate is another retraining: V's log-likelihoods move differently, so at least
    # the general loss differs from the main rate's.
    main, other = scores.states["heldout/none"], scores.states["heldout@0.01/none"]
    assert main["general_loss"] != other["general_loss"]
    with pytest.raises(NeuroplasticError, match="best_case_lrs must be distinct"):
        replace(config, best_case_lrs=(config.learning_rate,))


def test_arms_differ_in_the_removal_and_nothing_else(tiny_llama, study, tmp_path):
    config, _, data = study
    # With no removal in any arm, every arm of a protocol must end identical.
    scores = Scores(tmp_path / "scores.jsonl")
    run_states(
        tiny_llama, data, config, {"removal": no_removal, "control": no_removal}, scores, print
    )
    assert list(scores.states) == states_of(config.protocols)
    for protocol in config.protocols:
        arms = [scores.states[f"{protocol}/{arm}"] for arm in ("removal", "control", "none")]
        for record in arms:
            record.pop("seconds"), record.pop("state")
        assert arms[0] == arms[1] == arms[2]
    # ... and retraining did change the model (or the test above would prove nothing).
    base = {k: v for k, v in scores.states["base"].items() if k not in ("seconds", "state")}
    assert arms[0] != base


def test_the_removal_holds_while_retraining(tiny_llama, study):
    from neuroplastic.core.ablation import ablate

    config, _, data = study
    held = NeuronSet.of(2, tiny_llama.cfg.d_mlp, [(0, 1), (1, 3), (1, 5)])
    weights = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    try:
        with ablate(tiny_llama, held, permanent=True):
            _retrain(tiny_llama, data, config, "heldout")
            captured = {}
            hooks = [
                (mlp_hook_name(layer), lambda x, hook, layer=layer: captured.update({layer: x}))
                for layer in range(2)
            ]
            with torch.no_grad(), tiny_llama.hooks(fwd_hooks=hooks):
                tiny_llama(data.train["heldout"].collate([0]).tokens)
            assert captured[0][..., 1].abs().max() == 0
            assert captured[1][..., [3, 5]].abs().max() == 0
            assert captured[1][..., 4].abs().max() > 0
        changed = any(not torch.equal(v, weights[k]) for k, v in tiny_llama.state_dict().items())
        assert changed
    finally:
        tiny_llama.load_state_dict(weights)


def test_a_seed_resumes_to_the_same_files_and_refuses_other_settings(tiny_llama, tmp_path):
    config = FactsConfig(**SMALL, protocols=("heldout",))
    first = run_facts_seed(config, tmp_path, model=tiny_llama, log=lambda line: None)
    directory = tmp_path / "seed-0"
    lines = (directory / "scores.jsonl").read_text().splitlines()
    assert [json.loads(line)["state"] for line in lines] == states_of(("heldout",))
    # Killed after three states (the fourth line torn): the rerun redoes the rest only.
    (directory / "scores.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    again = run_facts_seed(config, tmp_path, model=tiny_llama, log=lambda line: None)

    def without_time(states):
        return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in states.items()}

    assert without_time(again["states"]) == without_time(first["states"])
    assert again["measures"] == first["measures"]
    assert again["states"]["base"]["seconds"] == first["states"]["base"]["seconds"]
    with pytest.raises(NeuroplasticError, match=r"other settings \(steps\)"):
        run_facts_seed(
            FactsConfig(**{**SMALL, "steps": 4}, protocols=("heldout",)), tmp_path, tiny_llama
        )


@pytest.mark.slow
def test_the_command_writes_intervals_across_seeds(tmp_path):
    out = tmp_path / "study"
    command = [*CLI, "facts", "--out", str(out), "--seeds", "0,1"]
    command += ["--model", "tiny-llama", "--max-facts", "12", "--steps", "2", "--relearn"]
    command += ["heldout", "--retain-questions", "8", "--general-sentences", "8", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    study = json.loads((out / "facts.json").read_text())
    assert study["seeds"] == [0, 1]
    drops = [
        json.loads((out / f"seed-{s}" / "summary.json").read_text())["measures"]["removal_drop_v"]
        for s in (0, 1)
    ]
    assert study["measures"]["removal_drop_v"]["values"] == drops
    assert [study["per_seed"][s]["measures"]["removal_drop_v"] for s in ("0", "1")] == drops
    assert "removal_drop_v" in result.stdout
    # The page shows the figures of facts.json, as text.
    import html

    from neuroplastic.analysis.intervals import as_text

    page = html.unescape((out / "report.html").read_text())
    assert as_text(study["measures"]["removal_drop_v"]) in page
    assert as_text(study["measures"]["heldout_removal_recovered_net"]) in page
    bad = subprocess.run(
        [*CLI, "facts", "--out", str(out), "--relearn", "heldout,forgotten"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown protocol 'forgotten'" in bad.stderr


def test_intervals_keep_to_each_measures_range():
    """Accuracies near 1 with a wide spread: a t-interval would pass 1, the seeds' range
    does not; a share recovered is unbounded and keeps its t-interval."""
    from neuroplastic.analysis.facts_measures import bounds_of

    values = (1.0, 0.2, 1.0)
    seeds = [{"measures": {"removal_v": v, "heldout_removal_recovered": v}} for v in values]
    out = aggregate(seeds)
    assert out["removal_v"]["ci_high"] <= 1.0 and out["removal_v"]["ci_low"] >= 0.0
    assert out["heldout_removal_recovered"]["ci_high"] > 1.0
    assert bounds_of("removal_drop_v") == (-1.0, 1.0)
    assert bounds_of("drop_v_vs_control") == (-1.0, 1.0)
    assert bounds_of("heldout_best_removal_v") == (0.0, 1.0)
    assert bounds_of("removal_general_damage") is None


def test_the_lens_reads_every_state_at_one_layer_fixed_at_base():
    """Base reads V best at layer 1 of the inner layers (the last is the output); the removal
    is read there, not at its own best layer, which is noise at layer 0."""
    from neuroplastic.analysis.facts_measures import lens_measures

    states = {
        "base": {"forget_v_lens": [0.25, 0.8, 0.5, 0.9]},
        "removal": {"forget_v_lens": [0.6, 0.3, 0.25, 0.25]},
        "control": {"forget_v_lens": [0.25, 0.7, 0.5, 0.8]},
    }
    out = lens_measures(states, [])
    assert out["lens_layer"] == 1.0
    assert out["lens_base_fixed"] == 0.8 and out["lens_removal_fixed"] == 0.3
    assert out["lens_control_fixed"] == 0.7 and out["lens_removal_L0"] == 0.6
    assert lens_measures({"base": {}}, []) == {}


def test_the_fitted_lens_reads_every_state_at_the_earliest_of_bases_best_layers():
    """Base reads V best at layers 1 and 2 of the inner layers: the fitted lens reads every
    state at 1 (the logit lens would at 2); a state measured without it reads None."""
    from neuroplastic.analysis.facts_measures import lens_measures

    states = {
        "base": {"forget_v_fitted": [0.25, 0.9, 0.9, 0.95]},
        "removal": {"forget_v_fitted": [0.25, 0.3, 0.8, 0.3]},
        "control": {},
    }
    out = lens_measures(states, [])
    assert out["fitted_layer"] == 1.0 and "lens_layer" not in out
    assert out["fitted_base_fixed"] == 0.9 and out["fitted_removal_fixed"] == 0.3
    assert out["fitted_removal_L2"] == 0.8
    assert out["fitted_control_fixed"] is None and out["fitted_control_L3"] is None
    logit = {"base": {"forget_v_lens": states["base"]["forget_v_fitted"]}}
    assert lens_measures({**states, **logit}, [])["lens_layer"] == 2.0


def test_a_run_measured_before_the_lenses_resumes_and_gathers(tiny_llama, tmp_path):
    """Base and each removal alone are rebuilt and read through the lenses they lack, as they
    read in a run that had them; the retrained states cannot be, and read None, said once."""
    from neuroplastic.report.facts_report import facts_page

    config = FactsConfig(**SMALL, protocols=("heldout",))
    first = run_facts_seed(config, tmp_path, model=tiny_llama, log=lambda line: None)
    path = tmp_path / "seed-0" / "scores.jsonl"
    old = [json.loads(line) for line in path.read_text().splitlines()]
    for record in old:
        del record["forget_v_lens"], record["forget_v_fitted"]
    path.write_text("".join(json.dumps(record) + "\n" for record in old))
    lines: list[str] = []
    again = run_facts_seed(config, tmp_path, model=tiny_llama, log=lines.append)
    for state in ("base", "removal", "control"):
        assert again["states"][state] == first["states"][state]  # seconds too: not redone
    for state in states_of(("heldout",))[3:]:
        assert not {"forget_v_lens", "forget_v_fitted"} & set(again["states"][state])
    for name in ("fitted_layer", "fitted_removal_fixed", "lens_control_L1"):
        assert again["measures"][name] == first["measures"][name]
    assert first["measures"]["fitted_heldout_removal_fixed"] is not None
    assert again["measures"]["fitted_heldout_removal_fixed"] is None
    assert again["measures"]["lens_heldout_none_L0"] is None
    said = [line for line in lines if "measured before" in line]
    assert said == [
        "seed 0: 3 retrained states were measured before the logit lens and fitted lens "
        "existed, and retrained models are not kept: none for them (n/a in the measures), "
        "e.g. heldout/removal"
    ]
    # Gathered: the study and its page, the retrained state's column n/a.
    study = write_study(config, [0], tmp_path, [again], 0.0)
    page = facts_page(study).to_html()
    assert "through the fitted lens" in page
    assert study["measures"]["fitted_heldout_removal_L0"]["missing"] == 1
    lines.clear()
    run_facts_seed(config, tmp_path, model=tiny_llama, log=lines.append)
    assert sum("measured before" in line for line in lines) == 1  # said each time it resumes
