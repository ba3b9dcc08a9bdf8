"""The README's figures that restate the code's defaults are read from the code."""

import re
from pathlib import Path

import pytest

from neuroplastic.config import ExperimentConfig

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _synopsis() -> str:
    start = README.index("neuroplastic run --out DIR")
    return README[start : README.index("```", start)]


def test_the_command_synopsis_shows_the_defaults():
    defaults = ExperimentConfig()
    shown = dict(re.findall(r"\[--([a-z-]+) ([0-9.]+)", _synopsis()))
    assert shown, "no [--flag value] in the synopsis"
    for flag, value in shown.items():
        name = flag.replace("-", "_")
        assert hasattr(defaults, name), flag
        assert float(value) == float(getattr(defaults, name)), f"--{flag} {value}"


def test_the_plateau_rule_is_described_as_the_code_runs_it():
    defaults = ExperimentConfig()
    rule = re.search(r"plateau rule[^.]*?(\d+)% over (\d+) checks every (\d+) steps", README)
    assert rule, "the README states the plateau rule"
    tolerance, patience, every = (int(g) for g in rule.groups())
    assert tolerance / 100 == defaults.plateau_tolerance
    assert (patience, every) == (defaults.plateau_patience, defaults.plateau_every)
    assert f"or {defaults.base_steps} steps" in README


def _api_blocks() -> list[str]:
    """The Python API section's code blocks, in order."""
    section = README[README.index("## Python API") : README.index("## Demos")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@pytest.mark.slow  # the embedded corpus at its full size, twice, as the snippets load it
def test_the_python_api_snippets_run_as_written(tmp_path, monkeypatch):
    """The README's first two API blocks, run in one namespace as a reader would paste them,
    on tiny-bert (two layers) in place of the embedded model; the third (a whole run and a
    sweep) is the experiment tests' job."""
    pytest.importorskip("concept_erasure")
    ranking_block, erasure_block, run_block = _api_blocks()
    assert "run_experiment(" in run_block and "run_sweep(" in run_block
    code = "\n".join((ranking_block, erasure_block))
    code = code.replace('load_model("embedded")', 'load_model("tiny-bert")')
    code = code.replace("layers=[0, 5]", "layers=[0, 1]")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
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
