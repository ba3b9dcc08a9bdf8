"""The README stays a short front door, and the figures it and the docs restate from the code's
defaults are read from the code; its Python API snippets run as written."""

import json
import re
from pathlib import Path

import pytest

from neuroplastic.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = ROOT / "docs"
GETTING_STARTED = (DOCS / "getting-started.md").read_text(encoding="utf-8")
METHOD = (DOCS / "method.md").read_text(encoding="utf-8")
CLI = (DOCS / "cli.md").read_text(encoding="utf-8")


def test_the_readme_is_a_short_front_door():
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail to docs/"
    # History lives in CHANGELOG.md: no commit hashes, no dates.
    hashes = re.findall(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", README)
    assert not hashes, f"commit hashes in README.md: {hashes}"
    dates = re.findall(r"\b(?:19|20)\d\d-\d\d-\d\d\b", README)
    assert not dates, f"dates in README.md: {dates}"
    # A newcomer reaches install, the main command and the API near the top.
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:3] == ["## Two commands", "## Headline results", "## Install"], headings
    assert README.index("## Python API") < README.index("## Command line")
    assert "demos/report.png" in README


def test_the_readmes_relative_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def _synopsis(text: str) -> str:
    start = text.index("neuroplastic run --out DIR")
    return text[start : text.index("```", start)]


def test_the_command_synopsis_shows_the_defaults():
    from neuroplastic.facts_config import FactsConfig

    runs, facts = _synopsis(README).split("neuroplastic facts", 1)
    aliases = {"lr": "learning_rate"}
    for part, defaults in ((runs, ExperimentConfig()), (facts, FactsConfig())):
        shown = dict(re.findall(r"\[--([a-z-]+) ([0-9.e-]+)", part))
        assert shown, "no [--flag value] in the synopsis"
        for flag, value in shown.items():
            name = aliases.get(flag, flag.replace("-", "_"))
            assert hasattr(defaults, name), flag
            assert float(value) == float(getattr(defaults, name)), f"--{flag} {value}"
    # The command-line page shows the same synopsis.
    assert _synopsis(CLI) == _synopsis(README)


def test_the_plateau_rule_is_described_as_the_code_runs_it():
    defaults = ExperimentConfig()
    rule = re.search(r"plateau rule[^.]*?(\d+)% over (\d+) checks every (\d+) steps", METHOD)
    assert rule, "docs/method.md states the plateau rule"
    tolerance, patience, every = (int(g) for g in rule.groups())
    assert tolerance / 100 == defaults.plateau_tolerance
    assert (patience, every) == (defaults.plateau_patience, defaults.plateau_every)
    assert f"or {defaults.base_steps} steps" in METHOD


def _python_blocks(text: str, heading: str) -> list[str]:
    """The code blocks of one ``## heading`` section, in order."""
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readmes_api_snippets_are_the_docs():
    """The README shows the docs' first and last API blocks, word for word, so running the
    docs' blocks runs the README's."""
    ranking_block, run_block = _python_blocks(README, "## Python API")
    docs_ranking, _, docs_run = _python_blocks(GETTING_STARTED, "## Python API")
    assert ranking_block == docs_ranking
    assert run_block == docs_run
    # (named without their parentheses: conftest would take this check for an experiment)
    assert "run_experiment" in run_block and "run_sweep" in run_block


@pytest.mark.slow  # the embedded corpus at its full size, twice, as the snippets load it
def test_the_python_api_snippets_run_as_written(tmp_path, monkeypatch):
    """The docs' first two API blocks (the first is also the README's), run in one namespace as
    a reader would paste them, on tiny-bert (two layers) in place of the embedded model; the
    third (a whole run and a sweep) is the experiment tests' job."""
    pytest.importorskip("concept_erasure")
    ranking_block, erasure_block, run_block = _python_blocks(GETTING_STARTED, "## Python API")
    assert "run_experiment(" in run_block and "run_sweep(" in run_block
    code = "\n".join((ranking_block, erasure_block))
    code = code.replace('load_model("embedded")', 'load_model("tiny-bert")')
    code = code.replace("layers=[0, 5]", "layers=[0, 1]")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/getting-started.md", "exec"), namespace)
    # What the comments promise: the hooks are gone on exit; a removable handle; one AUC per
    # layer, in [0, 1]; a random control of the same rank.
    model, neurons = namespace["model"], namespace["neurons"]
    assert len(neurons) == max(1, round(0.05 * model.cfg.n_layers * model.cfg.d_mlp))
    assert namespace["logits"].shape[0] == 2
    held_at = [
        f"blocks.{layer}.{point}"
        for layer in (0, 1)
        for point in ("mlp.hook_post", "hook_resid_post")
    ]
    assert not any(model.hook_dict[name].fwd_hooks for name in held_at)
    assert set(namespace["readable"]) == {0, 1}
    assert all(0 <= auc <= 1 for auc in namespace["readable"].values())
    assert namespace["control"].rank == namespace["eraser"].rank


def test_the_headline_figures_are_the_committed_sweeps():
    """The README's headline drop and recovery, and the relearning page's, are the default
    sweep's committed sweep.json (hold mode, concept arm), as rounded there."""
    sweep = json.loads(
        (ROOT / "benchmarks" / "results" / "sweep-default-5seeds-cpu.json").read_text()
    )
    concept = sweep["cells"]["hold-selectivity"]["arms"]["concept"]

    def shown(measure: str, digits: int) -> str:
        m = concept[measure]
        return f"{m['mean']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"

    relearning = (DOCS / "studies" / "relearning.md").read_text(encoding="utf-8")
    for text in (README, relearning):
        assert shown("drop_at_pruning", 3) in text  # 0.882 [0.813, 0.952]
        assert shown("steps_to_recover_90", 1) in text  # 5.7 [5.5, 5.9]
    assert shown("steps_to_recover_90", 2) in relearning  # the table's 5.70 [5.47, 5.94]
    # Lasting recovery, re-derived from the same sweep's curves (benchmarks/lasting.py).
    lasting = json.loads(
        (ROOT / "benchmarks" / "results" / "lasting-default-5seeds-cpu.json").read_text()
    )
    concept = lasting["cells"]["hold-selectivity"]["arms"]["concept"]
    for text in (README, relearning):
        assert shown("lasting_recovery_90", 1) in text  # 16.9 [12.7, 21.2]


def test_the_savings_headline_is_the_fair_naive_sweep():
    """The README's savings row: each arm's lasting recovery to 80% of base and the savings,
    as the fair naive arm's committed sweep.json holds them (the seeds it has so far)."""
    sweep = json.loads((ROOT / "benchmarks" / "results" / "sweep-naive-fair-cpu.json").read_text())
    at_80 = sweep["cells"]["hold-selectivity"]["savings"]["targets"]["0.8"]
    relearned, naive = at_80["steps_relearned"]["mean"], at_80["steps_naive"]["mean"]
    shown = (
        f"{relearned:.1f} steps against {naive:.1f} for a model never taught LOC; savings "
        f"{at_80['savings']['mean']:.2f}"
    )
    assert shown in README
    seeds = sweep["cells"]["hold-selectivity"]["seeds"]
    words = {1: "one seed", 2: "two seeds", 3: "three seeds", 4: "four seeds"}
    if len(seeds) in words:
        assert f"{words[len(seeds)]} so far" in README


def test_the_smollm2_figures_are_the_committed_sweep():
    """The SmolLM2 page's relearning table and the README's SmolLM2 row, as the committed
    --task lm sweep holds them (2 decimals), with the number of seeds said where they are."""
    sweep = json.loads((ROOT / "benchmarks" / "results" / "sweep-smollm2-lm-cpu.json").read_text())
    cell = sweep["cells"]["hold-selectivity"]
    concept, random = cell["arms"]["concept"], cell["arms"]["random"]

    def shown(m: dict) -> str:
        return f"{m['mean']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"

    page = (DOCS / "studies" / "llm.md").read_text(encoding="utf-8")
    for measure in (
        "drop_at_pruning",
        "other_rise_at_pruning",
        "specificity_at_pruning",
        "share_recovered_5",
        "share_recovered_10",
        "share_recovered_30",
        "control_gap_closed_5",
        "control_gap_closed_10",
        "control_gap_closed_30",
    ):
        assert shown(concept[measure]) in page, measure
    assert shown(random["drop_at_pruning"]) in page
    paired = cell["concept_minus_random"]
    for measure in ("specificity_at_pruning", "final_gap_to_base"):
        assert shown(paired[measure]) in page, measure
    for measure in ("drop_at_pruning", "control_gap_closed_10"):
        assert shown(concept[measure]) in README, measure
    words = {3: "3 seeds", 4: "4 seeds", 5: "5 seeds"}
    assert words[len(cell["seeds"])] in page


def test_the_facts_figures_are_the_committed_study():
    """The facts page's five-seed tables and the README's facts row, as the committed facts
    study holds them, each figure in its own rounding (2 or 3 decimals)."""
    study = json.loads((ROOT / "benchmarks" / "results" / "facts-smollm2-cpu.json").read_text())
    measures = study["measures"]
    page = (DOCS / "studies" / "facts.md").read_text(encoding="utf-8")

    def shown(name: str, places: int) -> str:
        m = measures[name]
        return f"{m['mean']:.{places}f} [{m['ci_low']:.{places}f}, {m['ci_high']:.{places}f}]"

    for name in (
        "removal_v",
        "control_v",
        "removal_drop_v",
        "control_drop_v",
        "drop_v_vs_control",
        "removal_drop_v_greedy",
        "control_drop_v_greedy",
        "drop_v_greedy_vs_control",
        "removal_drop_t",
        "control_drop_t",
        "removal_drop_retain",
        "control_drop_retain",
        "control_general_damage",
        "heldout_removal_v",
        "heldout_removal_recovered",
        "heldout_removal_recovered_net",
        "heldout_gap_to_control",
        "heldout_none_gain",
        "heldout_none_gain_greedy",
        "heldout_removal_v_greedy",
        "unrelated_removal_v",
        "unrelated_removal_recovered",
        "unrelated_removal_recovered_net",
        "unrelated_gap_to_control",
        "retain_removal_v",
        "retain_removal_recovered",
        "retain_removal_recovered_net",
        "retain_control_recovered",
    ):
        assert shown(name, 3) in page, name
    assert measures["removal_general_damage"]["values"] == [0.194] * 5 or all(
        round(v, 3) == 0.194 for v in measures["removal_general_damage"]["values"]
    )
    assert measures["heldout_control_recovered"]["n"] == 3  # "(3 seeds)" on the page
    assert measures["retain_control_recovered"]["n"] == 3
    gap = measures["retain_gap_to_control"]  # shown with its sign turned, as "below"
    assert f"{-gap['mean']:.3f} [{-gap['ci_high']:.3f}, {-gap['ci_low']:.3f}]" in page
    for name in (
        "removal_v",
        "heldout_removal_recovered",
        "retain_removal_recovered",
        "unrelated_removal_recovered",
    ):
        assert shown(name, 2) in README, name
    assert len(study["seeds"]) == 5 and set(study["removed"]) == {922}


def unlearning_calibration_rows(calibration: dict) -> list[str]:
    """The unlearning page's calibration table, row by row, from its committed JSON."""

    def accuracy(scores: dict, part: str) -> str:
        return f"{scores[part]['multiple_choice']:.3f}"

    def row(edit: str, settings: str, scores: dict) -> str:
        cells = [accuracy(scores, p) for p in ("forget_v", "held_out", "retain")]
        return f"| {edit} | {settings} | {' | '.join(cells)} | {scores['general_loss']:.3f} |"

    rows = [row("none (base)", "", calibration["base"])]
    for candidate in calibration["rows"]:
        edit, _, settings = candidate["candidate"].partition(":")
        rows.append(row(edit, f"`{settings}`", candidate))
    return rows


def test_the_unlearning_calibration_table_is_the_committed_json():
    calibration = json.loads(
        (ROOT / "benchmarks" / "results" / "facts-unlearning-smollm2-cpu.json").read_text()
    )
    page = (DOCS / "studies" / "unlearning.md").read_text(encoding="utf-8")
    for row in unlearning_calibration_rows(calibration):
        assert row in page, row


#: The unlearning page's three comparison tables: measure names in each cell's facts.json.
COMPARISON_TABLES = (
    (
        "removal_v",
        "control_v",
        "drop_v_vs_control",
        "removal_drop_held_out",
        "removal_drop_retain",
        "removal_general_damage",
    ),
    (
        "heldout_removal_v",
        "heldout_removal_recovered",
        "heldout_removal_recovered_net",
        "heldout_gap_to_control",
    ),
    (
        "unrelated_removal_v",
        "unrelated_removal_recovered",
        "unrelated_removal_recovered_net",
        "unrelated_gap_to_control",
    ),
    (
        "lens_base_fixed",
        "lens_removal_fixed",
        "lens_control_fixed",
        "lens_heldout_removal_fixed",
        "fitted_base_fixed",
        "fitted_removal_fixed",
        "fitted_control_fixed",
    ),
)


def unlearning_comparison_rows(compare: dict) -> list[str]:
    """The unlearning page's comparison table, row by row, from its committed JSON."""

    def shown(m: dict) -> str:
        return f"{m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

    rows = []
    for columns in COMPARISON_TABLES:
        for cell, study in compare["cells"].items():
            cells = [shown(study["measures"][name]) for name in columns]
            rows.append(f"| {cell.split('=')[1]} | {' | '.join(cells)} |")
    return rows


def test_the_unlearning_comparison_is_the_committed_study():
    compare = json.loads(
        (ROOT / "benchmarks" / "results" / "facts-compare-smollm2-cpu.json").read_text()
    )
    page = (DOCS / "studies" / "unlearning.md").read_text(encoding="utf-8")
    for row in unlearning_comparison_rows(compare):
        assert row in page, row
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    graddiff = compare["cells"]["removal=graddiff"]["measures"]
    rmu = compare["cells"]["removal=rmu"]["measures"]
    for name in ("heldout_removal_recovered", "unrelated_removal_recovered", "drop_v_vs_control"):
        for value in (graddiff[name], rmu[name]):
            shown = f"{value['mean']:.2f} [{value['ci_low']:.2f}, {value['ci_high']:.2f}]"
            assert shown in readme, shown


def test_the_head_bias_figures_are_the_committed_benchmark():
    """The method page's and the README's threshold figures, from their JSON: the shift chosen
    on the probe sentences (the best there), scored on the validation sentences."""
    result = json.loads((ROOT / "benchmarks" / "results" / "head-bias-cpu.json").read_text())
    probe = {float(k): v for k, v in result["probe_f1_by_shift"].items()}
    assert result["chosen_shift"] == max(probe, key=lambda k: (probe[k], -k))
    assert result["pruned_f1_here"] == result["pruned_f1_recorded"]  # the run's own removal
    shifted = result["validation_f1_by_shift"][str(result["chosen_shift"])]
    assert shifted == result["shifted_f1"]
    share = (shifted - result["pruned_f1_here"]) / (result["base_f1"] - result["pruned_f1_here"])
    page = " ".join((DOCS / "method.md").read_text(encoding="utf-8").split())  # as wrapped
    for text in (
        f"from {result['pruned_f1_here']:.3f} to {shifted:.3f} (base {result['base_f1']:.3f})",
        f"{share:.2f} of the drop",
        f"+{result['chosen_shift']:g} nats",
        f"it gives {probe[result['chosen_shift']]:.3f}",
    ):
        assert text in page, text
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"brings F1 back to {shifted:.2f}" in readme
