"""One fine-tuned base for a sweep's cells that differ only after it (``AFTER_BASE``).

The expectation is computed independently: the same sweep with every cell training its own
base. Loading a sibling's base must change nothing but the time and the record of where the
weights came from."""

import json
from dataclasses import fields

import pytest
from tiny import TINY, without_provenance

import neuroplastic.experiment.pipeline as experiment
import neuroplastic.experiment.sweep as sweep
from neuroplastic.config import AFTER_BASE, ExperimentConfig
from neuroplastic.store.rundir import RunDir
from neuroplastic.store.shared_base import find_shared_base

# Long enough to learn some LOC, with the naive arm's own base to share as well.
SHARED = dict(TINY, base_steps=12, plateau_every=0, stage_steps=3, learning_rate=1e-2, naive=True)


def quiet(*_):
    pass


@pytest.mark.slow  # several tiny runs
def test_cells_sharing_a_base_give_the_results_of_cells_that_each_train_their_own(
    tmp_path, monkeypatch
):
    trained = []
    original = experiment._train_to_plateau

    def counting(setup, log=quiet):
        trained.append(setup.run.path)
        return original(setup, log)

    monkeypatch.setattr(experiment, "_train_to_plateau", counting)
    config = ExperimentConfig(**SHARED)
    grid = {"relearn": ["same", "masked"]}
    kwargs = dict(seeds=[0], modes=["hold", "regrow"], grid=grid, progress=False, log=quiet)
    alone = sweep.run_sweep(config, tmp_path / "alone", share_base=False, **kwargs)
    assert len(trained) == 4  # each of the four cells trained its own base
    trained.clear()
    shared = sweep.run_sweep(config, tmp_path / "shared", **kwargs)
    assert len(trained) == 1  # the first cell's base, loaded by the three others
    cells = sorted(alone["cells"])
    assert cells == sorted(shared["cells"]) and len(cells) == 4
    for cell in cells:
        ours = RunDir(tmp_path / "shared" / cell / "seed-0")
        theirs = RunDir(tmp_path / "alone" / cell / "seed-0")
        assert without_provenance(ours.summary()) == without_provenance(theirs.summary())
        assert ours.metrics_path.read_bytes() == theirs.metrics_path.read_bytes()
        first = cell == "hold-selectivity_relearn=same"
        for arm in ("concept", "naive"):
            source = ours.path.parent.parent / "hold-selectivity_relearn=same" / "seed-0"
            marker = json.loads(ours.marker_path(arm, "base").read_text())["base"]
            assert marker.get("shared_from") == (None if first else str(source))
    assert without_provenance(alone["cells"]) == without_provenance(shared["cells"])
    # Once every cell is done, no base weights are left behind.
    assert not list((tmp_path / "shared").rglob("base.safetensors"))


@pytest.mark.slow  # several tiny runs
def test_a_sibling_with_other_base_settings_is_not_loaded(tmp_path):
    config = ExperimentConfig(**SHARED)
    source = tmp_path / "source"
    experiment.run_experiment(config, source, progress=False, log=quiet, keep_base=True)
    assert RunDir(source).weights_path("concept", "base").is_file()  # kept for siblings
    after_base = ExperimentConfig(**{**SHARED, "mode": "regrow", "relearn_lr": 3e-3})
    assert find_shared_base([source], after_base, "concept") is not None
    for other in ({"learning_rate": 5e-3}, {"seed": 1}, {"train_sentences": 80}):
        assert (
            find_shared_base([source], ExperimentConfig(**{**SHARED, **other}), "concept") is None
        )
    # A base whose weights were changed after the run wrote them is passed over, not loaded.
    weights = RunDir(source).weights_path("concept", "base")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    assert find_shared_base([source], after_base, "concept") is None


@pytest.mark.slow  # several tiny runs
def test_the_settings_that_act_after_the_base_leave_its_weights_unchanged(tmp_path):
    # Every AFTER_BASE setting at once away from its default (those that go together): the
    # base each fine-tunes must be the same file, byte for byte, and measure the same.
    default = ExperimentConfig(**SHARED)
    changed = ExperimentConfig(
        **{
            **SHARED, "method": "probeless", "selection": "count", "count": 10,
            "baseline": "random-global", "stages": 1, "stage_steps": 2, "schedule": "per-stage",
            "eval_grid": "dense", "eval_every": 1, "top_k_tokens": 3, "relearn": "masked",
            "relearn_lr": 5e-3,
        }
    )  # fmt: skip
    assert set(default.identity().items()) ^ set(changed.identity().items())
    assert default.base_identity() == changed.base_identity()
    bases = []
    for name, config in (("default", default), ("changed", changed)):
        experiment.run_experiment(
            config, tmp_path / name, progress=False, log=quiet, keep_base=True
        )
        run = RunDir(tmp_path / name)
        bases.append(
            (
                run.weights_path("concept", "base").read_bytes(),
                run.weights_path("naive", "base").read_bytes(),
                json.loads(run.marker_path("concept", "base").read_text())["rows"][-1]["f1"],
            )
        )
    assert bases[0] == bases[1]


@pytest.mark.slow  # several tiny runs
def test_a_base_trained_by_another_number_of_processes_is_not_loaded(tmp_path):
    config = ExperimentConfig(**SHARED)
    source = tmp_path / "source"
    experiment.run_experiment(config, source, progress=False, log=quiet, keep_base=True)
    marker = RunDir(source).marker_path("concept", "base")
    record = json.loads(marker.read_text())
    assert find_shared_base([source], config, "concept") is not None
    marker.write_text(json.dumps({**record, "processes": 2}))  # as a 2-process run records it
    assert find_shared_base([source], config, "concept") is None


def test_every_setting_is_either_part_of_the_base_or_acts_after_it():
    names = {f.name for f in fields(ExperimentConfig)}
    assert set(AFTER_BASE) <= names
    base = set(ExperimentConfig(**SHARED).base_identity())
    # What the base weights depend on: the model, the data, its training and the seed.
    for name in ("model", "dataset", "concept", "seed", "learning_rate", "base_steps",
                 "train_sentences", "probe_sentences", "batch_size", "plateau_every"):  # fmt: skip
        assert name in base
    assert not base & set(AFTER_BASE)
    # A setting added later: at its default, runs keep their hash; set, it trains another base.
    assert "group_by_length" not in ExperimentConfig(**SHARED).identity()
    grouped = ExperimentConfig(**SHARED, group_by_length=10).base_identity()
    assert grouped["group_by_length"] == 10
    assert grouped != ExperimentConfig(**SHARED).base_identity()


@pytest.mark.parametrize("arm", ["concept", "naive"])
def test_a_finished_run_keeps_no_base_unless_asked(tmp_path, arm):
    config = ExperimentConfig(**SHARED)
    experiment.run_experiment(config, tmp_path / "run", progress=False, log=quiet)
    assert not RunDir(tmp_path / "run").weights_path(arm, "base").is_file()
    assert find_shared_base([tmp_path / "run"], config, arm) is None
