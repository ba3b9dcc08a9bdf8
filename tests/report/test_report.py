"""The report and the neuron view page, opened in headless Chromium (one browser for both)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import Chromium, Rendered
from fake_run import PRIMED, FakeRun, make_fake_run

from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError
from neuroplastic.report.run_report import write_report
from neuroplastic.report.views import (
    examples_from_model,
    examples_from_top_k,
    write_neuron_view_page,
)

SELECTORS = [".np-cv", ".np-cv:empty", ".np-error", ".plotly-graph-div", ".main-svg"]
EVALUATE = {
    "views_with_children": (
        "Array.from(document.querySelectorAll('.np-cv')).map(el => el.childElementCount)"
    ),
    "plots_with_svg": (
        "Array.from(document.querySelectorAll('.plotly-graph-div'))"
        ".filter(el => el.querySelector('svg.main-svg') !== null).length"
    ),
    "headings": "Array.from(document.querySelectorAll('h2')).map(el => el.textContent)",
    "view_text": "Array.from(document.querySelectorAll('.np-cv')).map(el => el.textContent)",
    # Missing (NaN / null) cells of every heatmap trace, as plotly.js holds them.
    "heatmap_gaps": """Array.from(document.querySelectorAll('.plotly-graph-div')).flatMap(d =>
        (d._fullData || []).filter(t => t.type === 'heatmap').map(t => {
            let n = 0;
            const walk = v => {
                if (v === null || v === undefined || (typeof v === 'number' && isNaN(v))) n++;
                else if (typeof v === 'object' && typeof v.length === 'number')
                    Array.from(v).forEach(walk);
            };
            walk(t.z);
            return n;
        }))""",
}


@pytest.fixture(scope="module")
def chrome() -> Iterator[Chromium]:
    with Chromium() as browser:
        yield browser


def _source_views(source: str) -> int:
    return len(re.findall(r'<script type="application/json" data-circuitsvis=', source))


def _assert_rendered(rendered: Rendered, source: str) -> None:
    """Every plot drew its SVG, every CircuitsVis view has children, nothing failed or left."""
    assert rendered.console_errors == []
    assert rendered.external_requests == []
    assert rendered.failed_requests == []
    assert rendered.settled
    n_plots = source.count('class="plotly-graph-div"')
    assert rendered.count(".plotly-graph-div") == n_plots
    assert rendered.values["plots_with_svg"] == n_plots
    assert rendered.count(".main-svg") >= n_plots
    n_views = _source_views(source)
    assert rendered.count(".np-cv") == n_views
    assert rendered.count(".np-cv:empty") == 0
    assert rendered.count(".np-error") == 0
    assert all(n > 0 for n in rendered.values["views_with_children"])
    # Offline: each bundle inlined once, nothing loaded from elsewhere.
    if n_views:
        assert source.count("var CircuitsVis=") == 1
    if n_plots:
        assert source.count("plotly.js v") == 1
    assert not re.search(
        r"<(?:script|link|img)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//",
        source,
        flags=re.IGNORECASE,
    )


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeRun:
    return make_fake_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def report(fake: FakeRun) -> Path:
    return write_report(fake.path, top=6, n_neurons=8, n_views=3)


@pytest.fixture(scope="module")
def rendered_report(chrome: Chromium, report: Path) -> Rendered:
    return chrome.render(report, wait_ms=20_000, selectors=SELECTORS, evaluate=EVALUATE)


def test_report_is_written_into_the_run_directory(fake: FakeRun, report: Path) -> None:
    assert report == fake.run.report_path and report.is_file()
    assert sorted(p.name for p in fake.path.iterdir() if p.name.startswith(".")) == []


def test_report_leads_with_the_concepts_recovery_beside_its_control(report: Path) -> None:
    source = report.read_text(encoding="utf-8")
    headline = source.index("LOC F1 while retraining: the concept arm against its control")
    assert headline < source.index(">Key numbers<") < source.index(">Recovery<")
    assert source.count('class="plotly-graph-div"', 0, headline) == 1  # the page's first figure
    # Every recovery figure names its y axis, and promises no curve it does not draw.
    assert '"title":{"text":"F1"}' in source.replace(" ", "")
    assert "probe loss)" not in source


@pytest.mark.browser
def test_report_renders_every_plot_and_view_offline(
    rendered_report: Rendered, report: Path
) -> None:
    source = report.read_text(encoding="utf-8")
    _assert_rendered(rendered_report, source)
    # The headline, recovery, saliency per layer, depth, heatmaps, primed scatter.
    assert rendered_report.count(".plotly-graph-div") == 6
    # Before/after views: 3 reappeared + 3 polysemantic neurons, 2 columns each, 2 arms; the
    # random arm has only the 2 polysemantic neurons that were always there.
    assert rendered_report.count(".np-cv") == 2 * (3 + 3) + 2 * (3 + 2)


@pytest.mark.browser
def test_report_shows_the_planted_story(rendered_report: Rendered, report: Path) -> None:
    headings = rendered_report.values["headings"]
    for heading in (
        "Key numbers",
        "Recovery",
        "Saliency per layer",
        "Saliency of every neuron",
        "Where the concept reappeared",
        "The ablated neurons",
        "Primed neurons",
        "Polysemantic neurons",
        "Configuration",
    ):
        assert heading in headings
    text = rendered_report.text
    assert "Where did LOC go?" in rendered_report.title
    # Depth, concept arm: of its base → last shift of 3.00 → 1.00 layers, -1.67 is the removal
    # itself (base → pruned, no training) and -0.33 relocation on its fixed population (by hand:
    # the top 6 of the survivors sit at mean layer 1.33 when pruned, 1.00 at the end); the
    # random arm moves neither way.
    assert "-0.33 layers" in text and "-1.67 layers" in text
    assert text.count("+0.00 layers") == 2
    assert "layer 1 (100%)" in text and "layer 3 (100%)" in text
    # Polysemantic neurons, concept vs random arm, over the 84 neurons alive throughout in both
    # arms and outside both removed sets.
    assert "2 → 8 of 84" in text and "2 → 2 of 84" in text
    assert "describes this one run" in text and "neuroplastic sweep" in text
    # The six ablated neurons of each arm are masked (no saliency) from the pruned stage on.
    assert rendered_report.values["heatmap_gaps"] == [0, 6, 6, 6] * 2
    assert "drawn grey (masked), not as 0" in text
    layer, neuron = PRIMED[0]
    assert f"L{layer}:N{neuron}" in text
    # The views show sentences with the neuron's top tokens.
    views = " ".join(rendered_report.values["view_text"])
    assert "Paris" in views and "Alice" in views


def test_report_needs_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(NeuroplasticError, match="no config.json"):
        write_report(tmp_path)
    (tmp_path / "config.json").write_text('{"concept": "LOC", "method": "probeless"}')
    with pytest.raises(NeuroplasticError, match="no arm has stage artifacts"):
        write_report(tmp_path)


def test_report_of_a_bare_run_directory(fake: FakeRun, tmp_path: Path) -> None:
    """No metrics, no summary, no embeddings, no sentences (an interrupted run): still a report."""
    bare = tmp_path / "bare"
    shutil.copytree(fake.path, bare)
    for name in (
        "metrics.jsonl",
        "summary.json",
        "token_embeddings.safetensors",
        "sentences.json",
        "report.html",
    ):
        (bare / name).unlink(missing_ok=True)
    out = write_report(bare, n_views=1)
    source = out.read_text(encoding="utf-8")
    assert "No evaluations recorded" in source
    assert "Similarity not computed" in source
    assert "No sentences stored" in source
    assert "No summary.json: scores per stage not recorded" in source
    assert _source_views(source) == 0
    plain = write_report(fake.path, tmp_path / "plain.html", similarity="none", n_views=1)
    assert _source_views(plain.read_text(encoding="utf-8")) == 2 * (1 + 1) * 2


def test_top_k_examples_mark_the_stored_top_tokens(fake: FakeRun) -> None:
    run = fake.run
    stage = run.stage("concept", "retrain-2")
    layer, neuron = PRIMED[0]
    examples = examples_from_top_k(
        stage.top_tokens, run.sentences(), layer, neuron, max_sentences=10
    )
    assert examples.alive and not examples.full and examples.skipped == 0
    values = stage.stats.top_values[layer, neuron]
    assert sum(int((a != 0).sum()) for a in examples.activations) == len(values)
    best = max(float(a.max()) for a in examples.activations)
    assert best == pytest.approx(float(values.max()))
    for tokens, activations in zip(examples.tokens, examples.activations, strict=True):
        assert len(tokens) == len(activations)
        assert tokens[int(np.argmax(activations))].strip() in {
            "Paris",
            "London",
            "Berlin",
            "Alice",
            "Bob",
            "Carol",
        }
    dead = examples_from_top_k(run.stage("concept", "pruned").top_tokens, run.sentences(), 3, 0)
    assert not dead.alive


# ---------------------------------------------------------------------------------------------
# The neuron view page, with a model at hand
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def view_inputs(tiny_gpt2, corpus):
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=40)
    stats = collect_stats(tiny_gpt2, dataset, batch_size=16, top_k=6, progress=False)
    neurons = NeuronSet.parse("0:3,1:10,1:40", tiny_gpt2.cfg.n_layers, tiny_gpt2.cfg.d_mlp)
    return tiny_gpt2, dataset, stats, neurons


def test_model_examples_carry_every_tokens_activation(view_inputs) -> None:
    model, dataset, stats, neurons = view_inputs
    examples = examples_from_model(model, dataset, neurons, stats, max_sentences=3, batch_size=7)
    assert [(e.layer, e.neuron) for e in examples] == list(neurons.neurons)
    for example in examples:
        assert example.full and 1 <= len(example.tokens) <= 3
        for tokens, activations in zip(example.tokens, example.activations, strict=True):
            assert len(tokens) == len(activations)
            assert np.count_nonzero(activations) > 1  # real activations, not just the top one
        # The re-run reproduces the statistics' top activation at its stored position.
        top_sentence = int(stats.top_sentence[example.layer, example.neuron, 0])
        top_position = int(stats.top_position[example.layer, example.neuron, 0])
        first = example.activations[0]
        assert example.top["sentence"].iloc[0] == top_sentence
        assert first[top_position] == pytest.approx(
            float(stats.top_values[example.layer, example.neuron, 0]), abs=1e-4
        )
    wrong = NeuronSet.parse("0:1", 3, model.cfg.d_mlp)
    with pytest.raises(NeuroplasticError, match="model has"):
        examples_from_model(model, dataset, wrong, stats)


@pytest.mark.browser
def test_neuron_view_page_renders(view_inputs, chrome: Chromium, tmp_path: Path) -> None:
    model, dataset, stats, neurons = view_inputs
    out = write_neuron_view_page(
        model, dataset, neurons, tmp_path / "views.html", stats=stats, max_sentences=3
    )
    source = out.read_text(encoding="utf-8")
    assert _source_views(source) == 1 + len(neurons)
    rendered = chrome.render(out, wait_ms=15_000, selectors=SELECTORS, evaluate=EVALUATE)
    _assert_rendered(rendered, source)
    assert "L1:N10" in rendered.text


def test_neuron_view_page_collects_statistics_itself(view_inputs, tmp_path: Path) -> None:
    model, dataset, _, _ = view_inputs
    neurons = NeuronSet.parse("1:2", model.cfg.n_layers, model.cfg.d_mlp)
    out = write_neuron_view_page(
        model, dataset, neurons, tmp_path / "one.html", top_k=4, max_sentences=2
    )
    assert _source_views(out.read_text(encoding="utf-8")) == 2


@pytest.mark.slow  # a tiny run
def test_neuron_views_show_every_tokens_activation_from_the_weights_of_their_stage(tmp_path):
    """The run stores, before releasing its weights, the whole-sentence activations of the
    neurons its report views: at base they are what the base model computes (run again here
    from the kept base weights), at the last stage their top tokens carry exactly the top-k
    values the stage's statistics recorded (the retrained weights, the removal held); and the
    report's views then colour every token."""
    import torch
    from tiny import tiny_config

    from neuroplastic.analysis.arm_run import ArmRun
    from neuroplastic.analysis.viewed import top_sentences, viewed_neurons
    from neuroplastic.config import ExperimentConfig
    from neuroplastic.core.models import mlp_hook_name
    from neuroplastic.experiment.pipeline import _setup, run_experiment
    from neuroplastic.report.run_report import write_report
    from neuroplastic.store.checkpoint import Checkpointer, load_weights
    from neuroplastic.store.rundir import RunDir

    out = tmp_path / "run"
    run_experiment(tiny_config(), out, progress=False, log=lambda *_: None, keep_base=True)
    run = RunDir(out)
    loaded = {arm: ArmRun.load(run, arm) for arm in run.arms()}
    wanted = viewed_neurons(loaded)
    config = ExperimentConfig.load(run.config_path)
    setup = _setup(config, Checkpointer(RunDir(tmp_path / "scratch")), False, lambda *_: None)
    load_weights(setup.module, run.weights_path("concept", "base"))
    setup.module.eval()
    model, data = setup.model, setup.probe_data
    for arm, arm_run in loaded.items():
        assert len(wanted[arm]) >= 5
        for stage in ("base", arm_run.last):
            stored = run.sentence_activations(arm, stage)
            assert run.manifest.matches(run.sentence_activations_path(arm, stage))
            top = arm_run.stages[stage].top_tokens
            for layer, neuron in wanted[arm]:
                for sentence in top_sentences(arm_run, stage, layer, neuron):
                    values = stored[layer, neuron, sentence]
                    assert len(values) == len(data.token_strings(sentence))
                    if stage == "base":  # independently: the base model run on the sentence
                        batch = data.collate([sentence])
                        n = int(batch.attention_mask.sum())
                        assert n == len(values)
                        # the sentence alone, its padding cut off: no mask needed
                        _, cache = model.run_with_cache(
                            batch.tokens[:, :n], names_filter=mlp_hook_name(layer)
                        )
                        expected = cache[mlp_hook_name(layer)][0, :, neuron]
                        assert torch.allclose(torch.from_numpy(values), expected, atol=1e-5)
                    rows = top[
                        (top["layer"] == layer)
                        & (top["neuron"] == neuron)
                        & (top["sentence"] == sentence)
                    ]
                    for position, value in zip(rows["position"], rows["value"], strict=True):
                        assert values[int(position)] == pytest.approx(float(value), abs=1e-4)
    page = write_report(out).read_text()
    assert page.count("TextNeuronActivations") > 0
    assert "other tokens show 0" not in page
