"""Checks that come before the compute, and signs of life while it runs."""

import pytest
from tiny import tiny_config

from neuroplastic.cli.commands import main
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.pipeline import run_experiment


def quiet(*_):
    pass


def test_the_outside_label_is_refused_as_a_concept_before_any_work(tmp_path, capsys, monkeypatch):
    import neuroplastic.api as api

    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    for command in (["run", "--out", str(tmp_path / "r")], ["rank"]):
        assert main([*command, "--concept", "O", "--quiet"]) == 2
        assert "outside label" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_failed_start_leaves_no_directory_behind(tmp_path):
    with pytest.raises(NeuroplasticError, match="unknown concept label"):
        run_experiment(tiny_config(concept="CITY"), tmp_path / "new", log=quiet)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a directory the user made stays
    with pytest.raises(NeuroplasticError, match="unknown concept label"):
        run_experiment(tiny_config(concept="CITY"), tmp_path / "mine", log=quiet)
    assert (tmp_path / "mine").is_dir()


def test_base_fine_tuning_logs_every_plateau_check(tmp_path):
    lines = []
    config = tiny_config(base_steps=6, plateau_every=2, plateau_patience=5)
    summary = run_experiment(config, tmp_path, progress=False, log=lines.append)
    checks = [line for line in lines if "base fine-tuning step" in line]
    history = summary["base"]["probe_loss"]
    assert len(checks) == len(history) == 3
    for line, (step, loss) in zip(checks, history, strict=True):
        assert f"step {step:>5}  probe loss {loss:.4f}" in line
    first_row = next(i for i, line in enumerate(lines) if "F1 overall" in line)
    assert lines.index(checks[-1]) < first_row  # all before the base's own evaluation


def test_result_files_get_the_users_usual_permissions(tmp_path):
    import os

    from neuroplastic.io import atomic_write_json

    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "summary.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644  # readable by the group, as any new file
        os.umask(0o077)
        assert atomic_write_json(tmp_path / "private.json", {}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_wordpiece_tokens_read_as_words_and_bpe_tokens_are_left_alone():
    from neuroplastic.report.views import readable_tokens

    pieces = ["[CLS]", "why", "is", "san", "##ming", "so", "expensive", "?", "[SEP]"]
    shown = readable_tokens(pieces)
    assert "".join(shown) == "[CLS] why is sanming so expensive ? [SEP]"
    assert len(shown) == len(pieces)  # one span per token: the boundaries stay visible
    bpe = ["<|endoftext|>", "Why", " is", " San", "ming", " so", " expensive", "?"]
    assert readable_tokens(bpe) == bpe


def test_a_kernel_without_ipywidgets_gets_a_text_bar_and_no_warning(monkeypatch):
    import importlib.util
    import types
    import warnings

    import tqdm.std

    import neuroplastic.progress as progress

    class ZMQInteractiveShell:  # what a Jupyter kernel's get_ipython() returns
        pass

    fake = types.SimpleNamespace(get_ipython=lambda: ZMQInteractiveShell())
    monkeypatch.setitem(__import__("sys").modules, "IPython", fake)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ipywidgets" else real_find(name, *a),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm.auto's TqdmWarning would raise here
        bar = progress.progress(range(3), desc="x")
        assert list(bar) == [0, 1, 2]
    assert type(bar) is tqdm.std.tqdm


def test_without_chromium_a_browser_test_skips_with_the_remedy_but_fails_under_ci(monkeypatch):
    import browser

    monkeypatch.setenv("NEUROPLASTIC_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.chromium_executable()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(browser.BrowserUnavailable, match="apt-get install chromium"):
        browser.chromium_executable()


def test_make_installs_torch_first_then_runs_the_readmes_commands():
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    root = Path(__file__).resolve().parents[2]

    def steps(target: str) -> list[str]:
        # -B: every step, as on a fresh clone (no stamp yet)
        done = subprocess.run(
            ["make", "-n", "-B", target], cwd=root, capture_output=True, text=True, check=True
        )
        return done.stdout.splitlines()

    for target, command in (
        ("test", "python -m pytest -q -n auto --maxprocesses 4 --dist loadfile"),
        ("quick", 'python -m pytest -q -n auto --maxprocesses 4 --dist loadfile -m "not slow"'),
        ("run", "neuroplastic run --out runs/default"),
    ):
        lines = steps(target)
        torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
        project = next(i for i, line in enumerate(lines) if '-e ".[all,test,cluster,docs]"' in line)
        last = next(i for i, line in enumerate(lines) if command in line)
        assert torch < project < last, lines
        # A local copy, else PyTorch's CPU index: never a CUDA build.
        assert any("download.pytorch.org/whl/cpu" in line for line in lines[torch:project])
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme[:3000] and "make test" in readme[:3000]


def tiny_run_args(out, **overrides):
    from tiny import TINY

    args = ["run", "--out", str(out), "--quiet", "--no-report"]
    for name, value in {**TINY, **overrides}.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


class _Trained(Exception):
    """Raised where base fine-tuning would start: every check before it passed."""


@pytest.mark.parametrize(
    "overrides, fix",
    [
        ({"fraction": 0.6, "baseline": "random"}, "give --fraction 0.5 or less"),
        ({"fraction": 0.6, "baseline": "random-global"}, "give --fraction 0.5 or less"),
        ({"selection": "count", "count": 65, "baseline": "random-global"},
         "give --count 64 or less"),
        ({"selection": "per-layer", "count": 33, "baseline": "random"},
         "give --count 32 or less"),
    ],
)  # fmt: skip
def test_a_control_that_cannot_be_drawn_is_refused_before_any_training(
    tmp_path, cli, monkeypatch, overrides, fix
):
    """tiny-bert has 2 layers x 64 MLP neurons: a control outside a set of more than half of
    them (in all, or in a layer for per-layer selection) does not exist, whatever the ranking.
    The refusal comes before any training, and each way out it gives gets past every check."""
    import neuroplastic.experiment.pipeline as pipeline

    def trained(*_a, **_k):
        raise _Trained

    monkeypatch.setattr(pipeline, "_train_to_plateau", trained)
    code, _, stderr = cli(*tiny_run_args(tmp_path / "r", **overrides))
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("neuroplastic run: error: ")
    assert stderr.rstrip().endswith(
        f"; {fix}, or use --baseline random-any (as many neurons drawn from all, the set's "
        "included) or --baseline none"
    )
    assert not (tmp_path / "r").exists()  # nothing trained, nothing left
    key = "fraction" if "fraction" in overrides else "count"
    ways_out = [
        {**overrides, key: float(fix.split()[2]) if key == "fraction" else int(fix.split()[2])},
        {**overrides, "baseline": "random-any"},
        {**overrides, "baseline": "none"},
    ]
    for settings in ways_out:
        with pytest.raises(_Trained):  # every check passed: training would start now
            main(tiny_run_args(tmp_path / "ok", **settings))
