"""Integration tests on the embedded pretrained model (all-MiniLM-L6-v2) and corpus."""

import pytest
import torch

from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.load import encode_split, load_corpus

# Minutes of model runs and subprocesses: outside the quick loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded_stats(embedded_model):
    corpus = load_corpus(n_train=10, n_validation=320, seed=0)
    dataset = encode_split(corpus, embedded_model.tokenizer, "validation", max_length=64)
    return collect_stats(embedded_model, dataset, batch_size=32, top_k=20, progress=False)


def loc_share(stats, ranking, k):
    loc = stats.label_index("LOC")
    return float(
        torch.stack(
            [(stats.top_label[layer, n] == loc).float().mean() for layer, n in ranking.top(k)]
        ).mean()
    )


def test_top_loc_neurons_fire_on_location_tokens(embedded_stats):
    stats = embedded_stats
    base_rate = float(stats.count[stats.label_index("LOC")] / stats.count.sum())
    assert 0.05 < base_rate < 0.2
    # Standardized mean difference picks neurons that fire *on* LOC: their top tokens are mostly
    # location tokens.
    smd = Ranking.from_stats(stats, "LOC", "smd")
    assert loc_share(stats, smd, 10) > 0.5
    # Probeless scores |differences| of means against every other label, so it also picks
    # neurons that separate LOC by *not* firing, and neurons of the other entity types; its top
    # neurons' top tokens are still location tokens far above the base rate.
    probeless = Ranking.from_stats(stats, "LOC", "probeless")
    assert loc_share(stats, probeless, 50) > 2 * base_rate
    # And the ranking is about the concept: LOC and PER rankings differ at the top.
    per = Ranking.from_stats(stats, "PER", "probeless")
    assert len(set(probeless.top(50)) & set(per.top(50))) < 40


def test_shortened_default_experiment_and_its_report(tmp_path):
    """The default pipeline, shortened: fine-tune, ablate LOC neurons, retrain, report."""
    from browser import render

    from neuroplastic.config import ExperimentConfig
    from neuroplastic.experiment.pipeline import run_experiment
    from neuroplastic.report.run_report import write_report

    config = ExperimentConfig(
        train_sentences=1000,
        validation_sentences=128,
        probe_sentences=160,
        base_steps=130,
        plateau_every=0,
        stages=1,
        stage_steps=10,
    )
    summary = run_experiment(config, tmp_path, progress=False, log=lambda *_: None)
    concept = {s["stage"]: s["f1"] for s in summary["arms"]["concept"]["stages"]}
    random = {s["stage"]: s["f1"] for s in summary["arms"]["random"]["stages"]}
    assert concept["base"]["overall"] > 0.85
    loc_drop = concept["base"]["LOC"] - concept["pruned"]["LOC"]
    assert loc_drop > 0.3
    assert loc_drop > 2 * (concept["base"]["PER"] - concept["pruned"]["PER"])
    assert loc_drop > 3 * (random["base"]["LOC"] - random["pruned"]["LOC"])
    assert concept["retrain-1"]["LOC"] > concept["pruned"]["LOC"]  # it comes back

    selectors = [
        ".plotly-graph-div",
        ".plotly-graph-div .main-svg",
        ".np-cv",
        ".np-cv:empty",
        ".np-error",
    ]
    page = render(write_report(tmp_path), selectors=selectors)
    assert page.console_errors == [] and page.external_requests == []
    assert page.count(".plotly-graph-div") > 0
    assert page.count(".plotly-graph-div .main-svg") >= page.count(".plotly-graph-div")
    assert page.count(".np-cv") > 0 and page.count(".np-cv:empty") == 0
    assert page.count(".np-error") == 0
