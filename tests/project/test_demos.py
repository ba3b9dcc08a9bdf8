"""Each demo runs with small settings, and what it computed is checked (not what it printed).

A demo is a notebook in jupytext's percent format whose settings read ``NP_DEMO_*`` environment
variables; ``runpy`` runs it in this process and returns its variables.
"""

from __future__ import annotations

import json
import math
import runpy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from seqeval.metrics import classification_report

from neuroplastic.api import count_hooks, tag_sentence
from neuroplastic.config import ExperimentConfig
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import alive_neurons
from neuroplastic.report.html import reset_notebook_bundle

# Minutes of model runs and subprocesses: outside the quick loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

DEMOS = Path(__file__).resolve().parents[2] / "demos"
NOTEBOOKS = (
    "01_quickstart.py",
    "02_relearning.py",
    "03_polysemantic_neurons.py",
    "04_your_own_hooks.py",
    "05_paper_setting.py",
    "06_removals.py",
    "07_llm.py",
)


def run_demo(name: str, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> dict[str, Any]:
    """Run ``demos/name`` with ``NP_DEMO_<SETTING>`` overrides; returns its variables."""
    for key, value in settings.items():
        monkeypatch.setenv(f"NP_DEMO_{key.upper()}", str(value))
    reset_notebook_bundle()  # a fresh notebook session
    return runpy.run_path(str(DEMOS / name), run_name="__main__")


def assert_scores(scores: dict[str, float]) -> None:
    assert scores and all(0.0 <= value <= 1.0 for value in scores.values()), scores


def test_every_demo_is_a_notebook_under_test() -> None:
    demos = {p.name for p in DEMOS.glob("*.py") if p.name != "benchmark.py"}
    assert demos == set(NOTEBOOKS)
    for name in NOTEBOOKS:
        text = (DEMOS / name).read_text(encoding="utf-8")
        assert "format_name: percent" in text
        cells = text.split("\n# %%")
        assert len(cells) >= 5 and cells[1].startswith(" [markdown]\n# # "), name


def test_quickstart_ablates_loc_and_leaves_no_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = run_demo(
        "01_quickstart.py", monkeypatch, train_sentences=400, sentences=48, train_steps=40
    )
    model, ranking, neurons = demo["model"], demo["ranking"], demo["neurons"]
    assert len(neurons) == round(0.05 * model.cfg.n_layers * model.cfg.d_mlp)
    assert neurons.neurons == NeuronSet.top_fraction(ranking, 0.05).neurons

    # LOC F1 falls when the LOC neurons are ablated; every score is a proportion.
    base, ablated = demo["base_f1"], demo["ablated_f1"]
    assert_scores(base)
    assert_scores(ablated)
    assert ablated["LOC"] < base["LOC"] - 0.2

    # The base score agrees with seqeval over the per-sentence tags of tag_sentence.
    validation = demo["validation"]
    tagged = [tag_sentence(demo["tagger"], validation, i) for i in range(len(validation))]
    report = classification_report(
        [t["tag"].tolist() for t in tagged],
        [t["predicted"].tolist() for t in tagged],
        output_dict=True,
        zero_division=0,
    )
    assert report["LOC"]["f1-score"] == pytest.approx(base["LOC"])

    # The sentence shown: its true tags, a place name among them; unchanged after the block.
    sentence = demo["corpus"].validation[demo["index"]]
    before = demo["tags_before"]
    assert before["word"].tolist() == list(sentence.words)
    assert before["tag"].tolist() == list(sentence.tags) and "B-LOC" in sentence.tags
    assert demo["tags_after"].equals(before)
    assert len(demo["tags_ablated"]) == len(before)

    # One ablation hook per layer touched inside the block, none after, the rest untouched.
    assert demo["ablation_hooks_inside"] == len(neurons.by_layer())
    assert demo["ablation_hooks_after"] == 0
    assert demo["hooks_after"] == demo["hooks_before"] == count_hooks(model)
    assert not demo["removal"].active

    # The table and the views show the most salient neurons.
    table = demo["table"].frame
    assert list(zip(table["layer"], table["neuron"], strict=True)) == ranking.top(10)
    assert table["#"].tolist() == list(range(1, 11))
    view = demo["view"]
    assert sorted(view.neurons) == sorted(ranking.top(3))
    fragment = view._repr_html_()
    for layer, neuron in ranking.top(3):
        assert f"L{layer}:N{neuron}" in fragment


def test_relearning_curves_and_saliency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "run"
    demo = run_demo(
        "02_relearning.py",
        monkeypatch,
        model="tiny-bert",
        train_sentences=96,
        sentences=40,
        base_steps=6,
        stage_steps=4,
        out=out,
    )
    run, model_cfg = demo["run"], demo["config"]
    assert run.path == out and (out / "summary.json").is_file()

    # Recovery curves: both arms, the dense grid in the first stage (every step of its 4), F1 a
    # proportion.
    loc = demo["loc"]
    assert set(loc["arm"]) == {"concept", "random"}
    for arm, rows in loc.groupby("arm"):
        assert set(rows["step"]) == {0, 1, 2, 3, 4, 8}, arm
    assert loc["value"].between(0, 1).all()
    for entries in demo["stages"].values():
        for entry in entries:
            assert_scores(entry["f1"])
    traces = {trace.name: trace for trace in demo["recovery"].data}
    assert set(traces) == {"concept arm", "random arm"}
    concept_rows = loc[loc["arm"] == "concept"]
    assert list(traces["concept arm"].y) == concept_rows["value"].tolist()

    # Saliency per layer and stage; the held neurons have none (hold mode).
    saliency = demo["saliency"]
    n_layers, d_mlp = demo["rankings"]["base"].n_layers, demo["rankings"]["base"].d_mlp
    stages = ["base", "pruned", "retrain-1", "retrain-2"]
    assert list(dict.fromkeys(saliency["stage"])) == stages
    held = run.neurons("concept").per_layer_counts()
    assert sum(held.values()) == round(model_cfg.fraction * n_layers * d_mlp)
    for stage, rows in saliency.groupby("stage"):
        assert rows["layer"].tolist() == list(range(n_layers))
        for layer, n_alive in zip(rows["layer"], rows["n_alive"], strict=True):
            expected = d_mlp - (held.get(layer, 0) if stage != "base" else 0)
            assert n_alive <= expected, (stage, layer)
            if stage != "base":
                assert n_alive == expected, (stage, layer)
    assert len(demo["where"].data) == len(stages)
    depth = demo["depth"]
    assert depth["stage"].tolist() == stages
    assert depth["mean_layer"].between(0, n_layers - 1).all()
    assert depth["mean_layer_fixed"].between(0, n_layers - 1).all()
    moved = demo["moved"]
    by_stage = depth.set_index("stage")
    assert moved.shift == pytest.approx(
        by_stage.loc["retrain-2", "mean_layer_fixed"] - by_stage.loc["pruned", "mean_layer_fixed"]
    )
    assert moved.removal_shift == pytest.approx(
        by_stage.loc["pruned", "mean_layer"] - by_stage.loc["base", "mean_layer"]
    )

    # The report displays inline as a frame holding the whole page.
    frame = demo["report"]._repr_html_()
    assert frame.startswith('<iframe class="np-page"') and "Where did LOC go?" in frame


def test_polysemantic_neurons_mix_loc_with_another_label(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = run_demo("03_polysemantic_neurons.py", monkeypatch, sentences=60, top_k=10, n_shown=2)
    stats, table = demo["stats"], demo["polysemantic"]
    names = stats.label_names
    alive = alive_neurons(stats)
    # The report's definition, by hand: LOC's share of the top tokens between twice its share
    # of all tokens and one minus it; mixed with the most common other label, not O.
    rate = float(stats.count[names.index("LOC")] / stats.count.sum())
    low, high = 2 * rate, 1 - rate
    expected = set()
    for layer in range(stats.n_layers):
        for neuron in range(stats.d_mlp):
            labels = Counter(names[z] for z in stats.top_label[layer, neuron].tolist())
            # the most common other label; a tie with O goes to the entity type
            other = max(
                (n for n in names if n != "LOC"), key=lambda n: labels[n] - 0.5 * (n == "O")
            )
            share = labels["LOC"] / stats.k
            if alive[layer, neuron] and low <= share <= high and other != "O":
                expected.add((layer, neuron, labels["LOC"], other, labels[other]))
    found = set(
        zip(table["layer"], table["neuron"], table["LOC"], table["other_label"], table["other"],
            strict=True)
    )  # fmt: skip
    assert found == expected and len(found) >= 2
    gaps = (table["LOC"] - table["other"]).abs().tolist()
    assert gaps == sorted(gaps)  # the most even mixes first
    assert demo["poly"].counts["n_with_entity"].tolist() == [len(expected)]

    view = demo["view"]
    chosen = list(zip(table["layer"][:2], table["neuron"][:2], strict=True))
    assert view.neurons == chosen and view.columns
    fragment = view._repr_html_()
    assert fragment.count('data-circuitsvis="TextNeuronActivations"') == 2
    for heading in view.headings:
        assert heading in fragment and f"of {stats.k}" in heading


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-bert"])
def test_your_hooks_compose_with_an_ablation_in_either_order(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    demo = run_demo("04_your_own_hooks.py", monkeypatch, model=model, sentences=30, n_neurons=10)
    first, second = demo["cache_ablation_first"], demo["cache_patch_first"]
    assert torch.equal(demo["logits_ablation_first"], demo["logits_patch_first"])
    assert torch.equal(demo["logits_run_with_hooks"], demo["logits_ablation_first"])
    assert sorted(first.keys()) == sorted(second.keys()) and len(first.keys()) == 4
    for name in first.keys():
        assert torch.equal(first[name], second[name]), name
    assert demo["same_logits"] and demo["same_cache"]

    # Both interventions acted: the ablated neurons are zero in the user's cache, the patched
    # position holds the clean run's value, and each alone gives other logits.
    neurons = demo["neurons"]
    for layer, indices in neurons.by_layer().items():
        assert first[f"blocks.{layer}.mlp.hook_post"][..., indices].abs().max() == 0
    position, patch_at = demo["position"], demo["PATCH_AT"]
    assert torch.equal(first[patch_at][:, position], demo["clean_cache"][patch_at][:, position])
    assert not torch.equal(first[patch_at], demo["clean_cache"][patch_at])
    assert not torch.equal(demo["logits_patch_only"], demo["logits_ablation_first"])
    assert not torch.equal(demo["logits_ablation_only"], demo["logits_ablation_first"])

    # On the ablated hook point itself, order decides what a hook sees.
    assert demo["seen"]["added before"] > 0 and demo["seen"]["added after"] == 0
    assert demo["hooks_after"] == demo["hooks_before"] == count_hooks(demo["model"])
    assert count_hooks(demo["model"], ablations_only=True) == 0


def test_paper_setting_validates_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An NP_DEMO_OUT that does not exist yet is made (not a FileNotFoundError).
    tmp_path = tmp_path / "new" / "dir"
    demo = run_demo("05_paper_setting.py", monkeypatch, out=tmp_path)
    configs = demo["configs"]
    assert set(configs) == {"distilgpt2", "gpt2"}
    for name, config in configs.items():
        assert config.model == name and config.dataset == "conll2003"
        assert config.method == "probeless" and config.concept == "LOC"
        assert config.selection == "fraction" and config.fraction == 0.5
        assert config.learning_rate == 2e-5 and config.batch_size == 8
        assert config.weight_decay == 0.01 and config.schedule == "per-stage"
        assert (config.base_epochs, config.stages, config.stage_epochs) == (3, 4, 2)
        assert config.baseline == "random-global" and config.mode == "hold"
        # The file is valid JSON of the same settings, and the command names the preset.
        path = tmp_path / f"paper-{name}.json"
        assert json.loads(path.read_text(encoding="utf-8")) == config.to_dict()
        assert ExperimentConfig.load(path) == config
        assert "--preset paper" in demo["commands"][name]
    # Epochs in steps: 14,041 CoNLL-2003 training sentences less the 1,000 probe ones.
    size = demo["size"]
    assert size.loc["base fine-tuning steps", "gpt2"] == math.ceil(3 * 13_041 / 8)
    assert size.loc["steps per retraining stage", "gpt2"] == math.ceil(2 * 13_041 / 8)
    assert size.loc["held at zero"].tolist() == [6 * 3072 // 2, 12 * 3072 // 2]


def test_three_removals_from_one_base_traced_alike(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from neuroplastic.analysis.scores import recovery_curves
    from neuroplastic.core.erasure import LinearErasure

    demo = run_demo(
        "06_removals.py", monkeypatch, model="tiny-bert", train_sentences=96, sentences=40,
        base_steps=6, stage_steps=3, out=tmp_path,
    )  # fmt: skip
    summaries, runs = demo["summaries"], demo["runs"]
    assert list(summaries) == ["neurons", "leace", "direction"]
    # one base model for all three: the same base scores, and the same weights were loaded
    bases = {r: s["arms"]["concept"]["stages"][0]["f1"] for r, s in summaries.items()}
    assert bases["leace"] == bases["neurons"] == bases["direction"]
    loaded = dict(summaries["leace"]["base"])
    assert Path(loaded.pop("shared_from")) == runs["neurons"].path  # trained once, there
    assert loaded == summaries["neurons"]["base"]
    # each run held what it says
    assert "removal" not in summaries["neurons"]["arms"]["concept"]
    assert summaries["neurons"]["arms"]["concept"]["neurons"] > 0
    for removal in ("leace", "direction"):
        saved = LinearErasure.load(runs[removal].removal_path("concept"))
        assert saved.kind == removal and saved.layers == [0, 1]
        assert summaries[removal]["arms"]["concept"]["removal"]["what"] == saved.describe()
        assert summaries[removal]["arms"]["concept"]["neurons"] == 0
    # the table at once, from each run's own records
    at_once = demo["at_once"]
    for (removal, arm), row in at_once.iterrows():
        stages = {e["stage"]: e for e in summaries[removal]["arms"][arm]["stages"]}
        assert row["LOC F1 removed"] == stages["pruned"]["f1"]["LOC"]
        others = ["PER", "ORG", "MISC"]
        expected = sum(stages["pruned"]["f1"][k] - stages["base"]["f1"][k] for k in others) / 3
        assert row["others F1 removed - base"] == pytest.approx(expected)
        assert row["probe AUC, layer 1, removed"] == stages["pruned"]["readable"]["1"]
    # the recovery figure: each removal's two arms, as the metrics record them
    traces = {trace.name: trace for trace in demo["recovery"].data}
    assert len(traces) == 6
    for removal, run in runs.items():
        curves = recovery_curves(run.metrics())
        for arm in ("concept", "random"):
            rows = curves[(curves["arm"] == arm) & (curves["entity"] == "LOC")]
            rows = rows[rows["step"] >= 0]
            assert list(traces[f"{removal}, {arm} arm"].y) == rows["value"].tolist()
    # the probe table: every removal, every stage, both layers, as the summaries hold them
    probe = demo["probe"]
    assert len(probe) == 3 * 4 and list(probe.columns) == ["layer 0", "layer 1"]
    for (removal, stage), row in probe.iterrows():
        entry = next(
            e for e in summaries[removal]["arms"]["concept"]["stages"] if e["stage"] == stage
        )
        assert row["layer 0"] == entry["readable"]["0"] and 0 <= row["layer 1"] <= 1


def test_llm_neurons_ablated_in_a_with_block_and_restored(monkeypatch: pytest.MonkeyPatch):
    """On tiny-llama (a gated MLP, as SmolLM2's): the ranked set is the ranking's top k, the
    control matches it per layer, each continuation is the model's greedy one (recomputed here
    by hand with hooks placed by hand), and every hook is gone on exit."""
    from neuroplastic.core.models import mlp_hook_name

    demo = run_demo(
        "07_llm.py", monkeypatch, model="tiny-llama", sentences=30, n_neurons=12, n_shown=2,
        new_tokens=3,
    )  # fmt: skip
    model, neurons, control = demo["model"], demo["neurons"], demo["control"]
    assert neurons == NeuronSet.top_k(demo["ranking"], 12)
    assert control.per_layer_counts() == neurons.per_layer_counts()
    assert not set(control.neurons) & set(neurons.neurons)
    assert demo["after"] == demo["before"] and demo["hooks_left"] == 0
    assert count_hooks(model) == 0

    def greedy(prompt: str, held: NeuronSet | None) -> str:
        def zero(layer_neurons):
            def hook(activation, hook):
                activation = activation.clone()
                activation[..., layer_neurons] = 0
                return activation

            return hook

        hooks = [] if held is None else [
            (mlp_hook_name(layer), zero(indices)) for layer, indices in held.by_layer().items()
        ]  # fmt: skip
        ids = torch.tensor([model.tokenizer.encode(prompt, add_special_tokens=False)])
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            for _ in range(3):
                next_id = model(ids, return_type="logits")[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, next_id], dim=1)
        return model.tokenizer.decode(ids[0, -3:])

    for prompt in demo["PROMPTS"]:
        assert demo["before"][prompt] == greedy(prompt, None)
        assert demo["without_loc"][prompt] == greedy(prompt, neurons)
        assert demo["without_random"][prompt] == greedy(prompt, control)
    assert count_hooks(model) == 0
