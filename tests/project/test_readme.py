"""The README's figures that restate the code's defaults are read from the code."""

import re
from pathlib import Path

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
