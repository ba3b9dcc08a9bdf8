import os
import sys
from pathlib import Path

import pytest

# The shared helpers (tiny settings, fake runs, kills, the browser...) of every test folder.
sys.path.insert(0, str(Path(__file__).with_name("support")))
pytest_plugins = ["planted"]  # its fixture, for the predictor and chase tests

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`make test` runs one worker per core), each worker, and every process it
# starts, gets its share of the cores: two workers of two torch threads each on two cores spin
# against each other. Set before anything imports torch, which reads it once.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``neuroplastic ARGS...`` in this process and returns (exit code,
    stdout, stderr); arguments may be paths or numbers. argparse's usage errors give their exit
    code (2) rather than raising."""
    from neuroplastic.cli.commands import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def corpus():
    from neuroplastic.data.load import load_corpus

    return load_corpus(n_train=300, n_validation=80, seed=3)


@pytest.fixture(scope="session")
def embedded_corpus(corpus):
    return corpus


@pytest.fixture(scope="session")
def tiny_gpt2():
    from neuroplastic.core.models import load_model

    return load_model("tiny-gpt2", seed=0)


@pytest.fixture(scope="session")
def tiny_bert():
    from neuroplastic.core.models import load_model

    return load_model("tiny-bert", seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    """SmolLM2's architecture at toy size: a gated SiLU MLP (tests/core/test_gated_mlp.py)."""
    from neuroplastic.core.models import load_model

    return load_model("tiny-llama", seed=0)


@pytest.fixture(params=["tiny_gpt2", "tiny_bert"])
def tiny_model(request):
    model = request.getfixturevalue(request.param)
    yield model
    model.reset_hooks(including_permanent=True)


@pytest.fixture(scope="session")
def embedded_model():
    from neuroplastic.core.models import load_model

    return load_model("embedded")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny experiment at its default settings, run once for every test that only reads it
    (or copies it first): (its directory, its summary)."""
    from tiny import tiny_config

    from neuroplastic.experiment.pipeline import run_experiment

    out = tmp_path_factory.mktemp("tiny-run")
    return out, run_experiment(tiny_config(), out, progress=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def chase_run(tmp_path_factory):
    """A tiny 3-round chase with an evaluation every step: (its directory, its summary)."""
    from tiny import tiny_config

    from neuroplastic.experiment.pipeline import run_experiment

    out = tmp_path_factory.mktemp("chase")
    config = tiny_config(rounds=3, eval_every=1)
    return out, run_experiment(config, out, progress=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def preempt_run(tmp_path_factory):
    """A tiny run pre-empting the 20 survivors the gradient predictor scores highest."""
    from tiny import tiny_config

    from neuroplastic.experiment.pipeline import run_experiment

    out = tmp_path_factory.mktemp("preempt")
    config = tiny_config(preempt="gradient", preempt_count=20)
    return out, run_experiment(config, out, progress=False, log=lambda *_: None)


#: what in a test's or its fixtures' source runs a whole experiment (seconds to a minute each
#: on 2 cores): such tests are ``slow``, outside the quick loop (``pytest -m "not slow"``)
RUNS_AN_EXPERIMENT = (
    "run_experiment(",
    "run_sweep(",
    "killed_then_resumed(",
    '"run", "--out"',
    '"sweep", "--out"',
    "run_demo(",
)


def _runs_an_experiment(function) -> bool:
    import inspect

    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return any(marker in source for marker in RUNS_AN_EXPERIMENT)


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that runs an experiment, itself or through a fixture, so that
    the quick loop keeps the unit tests and the suite keeps everything."""
    slow = pytest.mark.slow
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        functions = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        if info is not None:
            for definitions in info.name2fixturedefs.values():
                functions += [definition.func for definition in definitions]
        if any(_runs_an_experiment(f) for f in functions if f is not None):
            item.add_marker(slow)
