"""The surviving neurons that gain saliency for the forget facts while a held arm relearns
(neuroplastic.experiment.facts_gainers): the file against a hand computation on the same
retrained weights, held neurons never among them, resumption that never retrains for them, and
the page's section (a neuron removal) or its absence (an eraser)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from scipy.stats import rankdata

from neuroplastic.core.ablation import ablate
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.facts import FORGET
from neuroplastic.experiment import facts_gainers, facts_states
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.experiment.facts_gainers import (
    TOP_GAINERS,
    VIEW_NEURONS,
    survivor_gainers,
)
from neuroplastic.experiment.facts_states import _retrain
from neuroplastic.experiment.facts_study import run_facts_seed, write_study
from neuroplastic.facts_config import FactsConfig
from neuroplastic.report.facts_report import facts_page

SMALL = dict(
    model="tiny-llama",
    max_facts=12,
    steps=2,
    retain_questions=8,
    general_sentences=8,
    protocols=("heldout",),
)
SECTION = "Which surviving neurons took the forget facts over"
VIEW = 'data-circuitsvis="TextNeuronActivations"'


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def neurons_study(tiny_llama, tmp_path_factory):
    config = FactsConfig(**SMALL)
    root = tmp_path_factory.mktemp("gainers")
    summary = run_facts_seed(config, root, model=tiny_llama, log=_quiet)
    return config, root, summary


def _gainers_file(root):
    return root / "seed-0" / "gainers-heldout.json"


def _ranking(model, data, method) -> Ranking:
    stats = collect_stats(model, data.recall, batch_size=32, progress=False)
    return Ranking.from_stats(stats, FORGET, method)


def _saliency_among(ranking: Ranking, population: torch.Tensor) -> torch.Tensor:
    """By hand: 1 for the largest score of the population, 0 for the smallest, ties averaged."""
    values = ranking.scores[population].double().numpy()
    rank = rankdata(-values, method="average") - 1  # 0 = the largest
    out = torch.full(population.shape, float("nan"), dtype=torch.float64)
    out[population] = torch.from_numpy(1 - rank / (len(values) - 1))
    return out


def test_the_file_is_the_hand_computation_on_the_same_retrained_weights(tiny_llama, neurons_study):
    config, root, _ = neurons_study
    data = StudyData(tiny_llama, config, root)
    content = json.loads(_gainers_file(root).read_text())
    assert set(content["arms"]) == {"removal", "control"}
    record = content["arms"]["removal"]
    held = NeuronSet.load(root / "seed-0" / "neurons-removal.json")
    weights = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    base = _ranking(tiny_llama, data, config.method)  # the removal's own ranking
    try:
        with ablate(tiny_llama, held, permanent=True):
            start = _ranking(tiny_llama, data, config.method)
            _retrain(tiny_llama, data, config, "heldout")  # the seed's batches: the same run
            end = _ranking(tiny_llama, data, config.method)
    finally:
        tiny_llama.load_state_dict(weights)
        tiny_llama.eval()
    population = start.alive & end.alive & ~held.mask()
    assert record["population"] == int(population.sum()) == 2 * 64 - len(held)
    gain = _saliency_among(end, population) - _saliency_among(start, population)
    # Largest gain first, ties by index (stable), as the main study lists its gainers.
    flat = sorted(
        (int(i) for i in population.flatten().nonzero()),
        key=lambda i: -float(gain.flatten()[i]),
    )[:TOP_GAINERS]
    expected = [divmod(i, 64) for i in flat]
    assert [(g["layer"], g["neuron"]) for g in record["gainers"]] == expected
    for g in record["gainers"]:
        layer, neuron = g["layer"], g["neuron"]
        assert g["saliency_base"] == pytest.approx(float(base.saliency[layer, neuron]))
        assert g["score_start"] == pytest.approx(float(start.scores[layer, neuron]), rel=1e-5)
        assert g["score_end"] == pytest.approx(float(end.scores[layer, neuron]), rel=1e-5)
        assert g["gain"] == pytest.approx(float(gain[layer, neuron]), abs=1e-9)
        assert g["rank_change"] == pytest.approx(g["gain"] * (record["population"] - 1))
    assert record["gainers"][0]["gain"] > 0  # retraining moved something
    # The views: the top gainers on every prompt, one value per token and neuron.
    view = record["view"]
    assert view["neurons"] == [list(n) for n in expected[:VIEW_NEURONS]]
    assert [p["group"] for p in view["prompts"]].count("retain") == 2
    for prompt in view["prompts"]:
        assert len(prompt["before"]) == len(prompt["after"]) == len(prompt["tokens"])
        assert all(len(row) == VIEW_NEURONS for row in prompt["before"] + prompt["after"])


def test_held_neurons_are_never_gainers():
    """Planted: the held neurons would gain most if they counted (alive, low at the start,
    top after), and are left out of the population, the list and the concentration."""
    scores = torch.arange(20, dtype=torch.float32).reshape(2, 10)
    held = NeuronSet.of(2, 10, [(0, 0), (0, 1)])
    after = scores.clone()
    after[0, :2] = 100.0  # the held neurons jump to the top
    after[1, 9], after[0, 5] = -1.0, 50.0  # a survivor falls, one rises
    start, end = Ranking(FORGET, "ratio", scores), Ranking(FORGET, "ratio", after)
    record = survivor_gainers(start, end, held, start, n=100)
    listed = [(g["layer"], g["neuron"]) for g in record["gainers"]]
    assert record["population"] == len(listed) == 18
    assert not set(listed) & {(0, 0), (0, 1)}
    assert listed[0] == (0, 5)
    assert record["n_top"] == 1  # 1% of 18 survivors: one neuron
    # It carries its own gain's share of all the positive gain, by hand.
    gain = _saliency_among(end, ~held.mask()) - _saliency_among(start, ~held.mask())
    assert record["gain_share_top"] == pytest.approx(
        float(gain[0, 5]) / float(gain.clamp(min=0).nansum())
    )
    assert record["held"] == 2


def test_no_held_neuron_in_either_arm_of_a_run(neurons_study):
    _, root, _ = neurons_study
    content = json.loads(_gainers_file(root).read_text())
    for arm, record in content["arms"].items():
        held = NeuronSet.load(root / "seed-0" / f"neurons-{arm}.json")
        assert not any((g["layer"], g["neuron"]) in held for g in record["gainers"])
        assert not any(tuple(n) in held for n in record["view"]["neurons"])


def test_a_resumed_seed_never_recomputes_gainers(tiny_llama, neurons_study, tmp_path, monkeypatch):
    config, root, _ = neurons_study
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    path = _gainers_file(tmp_path)
    written = path.read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed on resume")

    monkeypatch.setattr(facts_gainers, "recall_ranking", boom)
    monkeypatch.setattr(facts_states, "_retrain", boom)
    run_facts_seed(config, tmp_path, model=tiny_llama, log=_quiet)
    assert path.read_bytes() == written
    # A state measured before its gainers were followed: its retrained weights are gone; it is
    # not retrained for them, nothing is written, and the log says so.
    path.unlink()
    lines: list[str] = []
    run_facts_seed(config, tmp_path, model=tiny_llama, log=lines.append)
    assert not path.exists()
    noted = [line for line in lines if "measured before its gainers were followed" in line]
    assert [line.split()[2] for line in noted] == ["heldout/removal:", "heldout/control:"]


def test_the_page_shows_gainers_for_neurons_and_omits_them_for_an_eraser(
    tiny_llama, neurons_study, tmp_path
):
    config, root, summary = neurons_study
    page = facts_page(write_study(config, [0], root, [summary], 0.0), root).to_html()
    record = json.loads(_gainers_file(root).read_text())["arms"]["removal"]
    layer, neuron = record["view"]["neurons"][0]
    assert SECTION in page and "share of the gain in the top 1%" in page
    assert "saliency at start" in page  # the gainers' table
    assert f"L{layer}:N{neuron} before: base, the removal held" in page
    # Each view gainer before and after, as CircuitsVis components drawn offline.
    assert page.count(VIEW) == 2 * len(record["view"]["neurons"])
    # An eraser holds no neurons: no gainers, no section, no views.
    erasure = replace(config, removal="direction")
    lines: list[str] = []
    erased = run_facts_seed(erasure, tmp_path, model=tiny_llama, log=lines.append)
    assert not list((tmp_path / "seed-0").glob("gainers-*.json"))
    # A seed says nothing of it: its study says so once (test_facts_grid), not once per seed.
    assert not any("removal=neurons only" in line for line in lines)
    page = facts_page(write_study(erasure, [0], tmp_path, [erased], 0.0), tmp_path).to_html()
    assert SECTION not in page and VIEW not in page
