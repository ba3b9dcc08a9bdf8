"""A grid of facts studies (``neuroplastic facts --grid``): each cell the study its directory
would hold run alone, a study run alone gathered without a state redone, seeds the outer loop,
the comparison equal to the cells' own measures, and every bad grid refused before any model
loads. One tiny-llama grid (two removals, two seeds, some 20 s) serves the tests marked slow;
the refusals need no model."""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny import FACTS_TINY
from tiny import TINY as TINY_RUN

import neuroplastic.experiment.facts_grid as facts_grid
import neuroplastic.experiment.facts_study as facts_study
from neuroplastic.analysis.facts_measures import compared_measures
from neuroplastic.analysis.intervals import as_text
from neuroplastic.cli.commands import main
from neuroplastic.config import ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_data import StudyData
from neuroplastic.experiment.facts_grid_plan import plan_facts_grid
from neuroplastic.experiment.sweep_plan import plan_sweep
from neuroplastic.facts_config import FactsConfig

TINY = dict(FACTS_TINY, graddiff_steps=3, graddiff_lr=1e-3)
#: The same settings as flags; the cells add --removal (alone) or --grid removal=...
FLAGS = [
    "--seeds", "0,1", "--model", "tiny-llama", "--max-facts", "24", "--held-out", "0.5",
    "--steps", "2", "--relearn", "heldout", "--retain-questions", "8",
    "--general-sentences", "8", "--rmu-layer", "1", "--rmu-updated-layers", "0,1",
    "--graddiff-steps", "3", "--graddiff-lr", "1e-3",
]  # fmt: skip
SEEDS = (0, 1)
CELLS = ("removal=neurons", "removal=graddiff")
#: What a study run alone leaves in its directory.
STUDY_FILES = {"known.json", "seed-0", "seed-1", "facts.json", "report.html"}


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _stamps(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Each seed's scores and edits, bytes and modification time."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for pattern in ("seed-*/scores.jsonl", "seed-*/edit-*.safetensors")
        for path in sorted(directory.glob(pattern))
    }


@pytest.fixture(scope="module")
def grid(tiny_llama, tmp_path_factory):
    """One cell run alone (graddiff), then the grid of neurons and graddiff gathering it, both
    through the command line with the tiny model as the one load."""
    out = tmp_path_factory.mktemp("facts-grid")
    loads = []

    def load(*args, **kwargs):
        loads.append(args)
        return tiny_llama

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(facts_study, "load_model", load)
        patch.setattr(facts_grid, "load_model", load)
        code, _, err = _cli("facts", "--out", str(out / CELLS[1]), *FLAGS, "--removal", "graddiff")
        assert code == 0, err
        alone = SimpleNamespace(
            log=err,
            stamps=_stamps(out / CELLS[1]),
            files={p.name for p in (out / CELLS[1]).iterdir()},
            study=json.loads((out / CELLS[1] / "facts.json").read_text()),
        )
        loads.clear()
        # The grid through the sweep's spelling, which hands its arguments to the facts command.
        code, stdout, stderr = _cli(
            "sweep", "--dataset", "facts", "--out", str(out), *FLAGS, "--grid",
            "removal=neurons,graddiff",
        )  # fmt: skip
        assert code == 0, stderr
    return SimpleNamespace(out=out, alone=alone, stdout=stdout, log=stderr, loads=len(loads))


def _facts(out: Path, cell: str) -> dict:
    return json.loads((out / cell / "facts.json").read_text())


@pytest.mark.slow
def test_each_cell_is_the_study_its_directory_would_hold_alone(grid):
    assert sorted(p.name for p in grid.out.iterdir() if p.is_dir()) == sorted(CELLS)
    for cell, removal in zip(CELLS, ("neurons", "graddiff"), strict=True):
        config = FactsConfig(**TINY, removal=removal)
        assert {p.name for p in (grid.out / cell).iterdir()} == STUDY_FILES == grid.alone.files
        for seed in SEEDS:
            recorded = json.loads((grid.out / cell / f"seed-{seed}" / "config.json").read_text())
            assert recorded == replace(config, seed=seed).to_dict()
        study = _facts(grid.out, cell)
        assert study["config"] == {**config.to_dict(), "seed": None}
        assert study["seeds"] == list(SEEDS)
    # The gathered cell's study is the one run alone, only the time of this call differs.
    gathered = _facts(grid.out, CELLS[1])
    assert {**gathered, "seconds_this_call": 0} == {**grid.alone.study, "seconds_this_call": 0}


@pytest.mark.slow
def test_a_study_run_alone_is_gathered_without_redoing_a_state(grid):
    assert _stamps(grid.out / CELLS[1]) == grid.alone.stamps  # same bytes, never rewritten
    measured = re.findall(r"^(removal=\w+): seed (\d) (\S+): V", grid.log, re.MULTILINE)
    assert measured and {cell for cell, _, _ in measured} == {CELLS[0]}
    assert grid.loads == 1  # one model for the whole grid
    # The known facts were asked once, by the study run alone, and given to the other cell.
    assert "asking the base model" not in grid.log
    known = [(grid.out / cell / "known.json").read_bytes() for cell in CELLS]
    assert known[0] == known[1]


@pytest.mark.slow
def test_a_study_that_follows_no_gainers_says_so_once_not_per_seed(grid):
    note = "gainers are followed for removal=neurons only; none here"
    assert grid.alone.log.count(note) == 1  # graddiff alone, two seeds
    said = re.findall(rf"^(\S+): {re.escape(note)}$", grid.log, re.MULTILINE)
    assert said == [CELLS[1]]  # the grid: its graddiff cell, once for both seeds
    assert grid.log.count(note) == 1


@pytest.mark.slow
def test_seeds_are_the_outer_loop_and_cells_the_inner(grid):
    started = re.findall(r"^grid: seed (\d), cell \d/2 (\S+)$", grid.log, re.MULTILINE)
    assert started == [(str(s), cell) for s in SEEDS for cell in CELLS]
    seeds_measured = [
        int(s) for _, s, _ in re.findall(r"^(\S+): seed (\d) (\S+): V", grid.log, re.M)
    ]
    assert seeds_measured == sorted(seeds_measured)
    # Every cell's seed 0 was summed up before any cell's seed 1.
    written = {
        (cell, seed): (grid.out / cell / f"seed-{seed}" / "summary.json").stat().st_mtime_ns
        for cell in CELLS
        for seed in SEEDS
    }
    assert max(written[c, 0] for c in CELLS) <= min(written[c, 1] for c in CELLS)


@pytest.mark.slow
def test_the_comparison_holds_each_cells_own_measures(grid):
    comparison = json.loads((grid.out / "comparison.json").read_text())
    assert comparison["grid"] == {"removal": ["neurons", "graddiff"]}
    assert comparison["seeds"] == list(SEEDS)
    assert "removal" not in comparison["settings"] and comparison["settings"]["steps"] == 2
    assert comparison["split_groups"] == [list(CELLS)]  # held_out is shared: one T/V per seed
    assert list(comparison["cells"]) == list(CELLS)
    expected = [n for n in compared_measures(("heldout",)) if n != "heldout_best_removal_v"]
    assert comparison["measures"] == expected  # held-out drop present, no best case asked
    for cell, removal in zip(CELLS, ("neurons", "graddiff"), strict=True):
        compared = comparison["cells"][cell]
        assert compared["settings"] == {"removal": removal}
        measures = _facts(grid.out, cell)["measures"]
        assert compared["measures"] == {name: measures[name] for name in expected}


@pytest.mark.slow
def test_the_page_and_the_terminal_show_a_row_per_cell(grid):
    comparison = json.loads((grid.out / "comparison.json").read_text())
    page = html.unescape((grid.out / "comparison.html").read_text())
    assert "chance 0.25" in page and "MIN_DROP" in page and "the same T and V" in page
    for cell, data in comparison["cells"].items():
        assert f'href="{cell}/report.html"' in page
        row = page[page.index(f"<td>{data['settings']['removal']}</td>") :].split("</tr>")[0]
        assert as_text(data["measures"]["removal_v"]) in row
        assert as_text(data["measures"]["removal_drop_retain"]) in row
    assert f"comparison: {grid.out / 'comparison.html'}" in grid.stdout
    lines = grid.stdout.splitlines()
    assert all(any(line.startswith(cell) for line in lines) for cell in CELLS)


RMU_WITHOUT_HELD_OUT = (
    "cell removal=rmu_held_out=0.0: the rmu removal's control unlearns as many held-out"
)


def _must_not_load(*args, **kwargs):
    raise AssertionError("a model loaded before every cell was checked")


@pytest.mark.parametrize(
    ("grid_values", "says"),
    [
        ({"seed": [0, 1]}, "--grid seed: not a grid axis; seeds are the unit"),
        ({"best_case_lrs": ["1e-4"]}, "growable list"),
        ({"colour": ["red"]}, "--grid colour: not a facts study setting"),
        ({"steps": ["two"]}, "--grid steps=two: 'two' is not a whole number"),
        ({"rmu_updated_layers": ["0+x"]}, "whole numbers joined by \\+"),
        ({"removal": ["neurons", "neurons"]}, "distinct values"),
        ({"removal": ["neurons", "rmu"], "held_out": ["0.5", "0"]}, RMU_WITHOUT_HELD_OUT),
    ],
)  # fmt: skip
def test_a_bad_grid_is_refused_before_any_model_loads(monkeypatch, tmp_path, grid_values, says):
    monkeypatch.setattr(facts_grid, "load_model", _must_not_load)
    with pytest.raises(NeuroplasticError, match=says):
        facts_grid.run_facts_grid(FactsConfig(**TINY), grid_values, SEEDS, tmp_path / "g")
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_a_cell_resumed_under_other_settings_is_refused_before_loading(grid, monkeypatch):
    monkeypatch.setattr(facts_grid, "load_model", _must_not_load)
    before = _stamps(grid.out / CELLS[1])
    other = FactsConfig(**{**TINY, "graddiff_steps": 4})
    with pytest.raises(NeuroplasticError, match=r"graddiff/seed-0 holds .*\(graddiff_steps\)"):
        facts_grid.run_facts_grid(other, {"removal": ["graddiff"]}, SEEDS, grid.out)
    assert _stamps(grid.out / CELLS[1]) == before


@pytest.mark.slow
def test_a_grid_and_a_study_refuse_each_others_directories(grid, monkeypatch):
    for module in (facts_grid, facts_study):
        monkeypatch.setattr(module, "load_model", _must_not_load)
    with pytest.raises(NeuroplasticError, match="a grid of facts studies .*--out .*/<cell>"):
        facts_study.run_facts_study(FactsConfig(**TINY), SEEDS, grid.out)
    with pytest.raises(NeuroplasticError, match="holds a facts study .*subdirectories"):
        facts_grid.run_facts_grid(
            FactsConfig(**TINY), {"removal": ["neurons"]}, SEEDS, grid.out / CELLS[0]
        )


@pytest.mark.slow
def test_cells_that_share_held_out_share_each_seeds_split(grid, tiny_llama):
    root = grid.out / CELLS[0]  # its known.json: nothing is asked again
    for seed in SEEDS:
        splits = [
            StudyData(tiny_llama, FactsConfig(**TINY, removal=r, seed=seed), root).split
            for r in ("neurons", "graddiff")
        ]
        assert splits[0] == splits[1]
    plan = plan_facts_grid(
        FactsConfig(**TINY), {"removal": ["neurons", "graddiff"], "held_out": ["0.6", "0.5"]}
    )
    assert plan.split_groups() == [
        ["removal=neurons_held_out=0.6", "removal=graddiff_held_out=0.6"],
        ["removal=neurons_held_out=0.5", "removal=graddiff_held_out=0.5"],
    ]


def test_the_grid_types_its_values_as_the_command_line_does():
    plan = plan_facts_grid(
        FactsConfig(**TINY, removal="rmu"),
        {"rmu_updated_layers": ["0+1", (1,)], "rmu_lr": ["1e-2", 0.1], "rmu_steps": [2]},
    )
    assert [cell.name for cell in plan.cells] == [
        "rmu_updated_layers=0+1_rmu_lr=0.01_rmu_steps=2",
        "rmu_updated_layers=0+1_rmu_lr=0.1_rmu_steps=2",
        "rmu_updated_layers=1_rmu_lr=0.01_rmu_steps=2",
        "rmu_updated_layers=1_rmu_lr=0.1_rmu_steps=2",
    ]
    assert plan.cells[2].config.rmu_updated_layers == (1,)
    assert plan.cells[0].config.rmu_lr == 0.01


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "--dataset", "facts", "--out", "d"], ["facts", "--out", "d"]),
        (["sweep", "--out", "d", "--dataset=facts", "-q"], ["facts", "--out", "d", "-q"]),
        (["sweep", "--dataset", "synthetic", "--out", "d"], None),  # not the facts study
        (["run", "--dataset", "facts", "--out", "d"], None),  # run refuses it with a pointer
        (["sweep", "--out", "d", "--dataset"], None),  # argparse says what is missing
    ],
)
def test_a_sweep_of_the_facts_dataset_is_the_facts_commands_grid(argv, expected):
    from neuroplastic.cli.commands import _facts_sweep

    assert _facts_sweep(list(argv)) == (argv if expected is None else expected)


def test_the_unlearning_preset_gives_the_published_comparisons_settings():
    from neuroplastic.cli.commands import _facts_preset
    from neuroplastic.cli.parser import build_parser

    argv = _facts_preset(["facts", "--preset", "unlearning", "--out", "d"])
    args = build_parser().parse_args(argv)
    published = json.loads(
        (
            Path(__file__).parents[2] / "benchmarks/results/facts-compare-smollm2-cpu.json"
        ).read_text()
    )
    assert args.grid == [("removal", published["comparison"]["grid"]["removal"])]
    assert args.seeds[: len(published["comparison"]["seeds"])] == published["comparison"]["seeds"]
    for cell in published["cells"].values():
        config = cell["config"]
        assert (args.held_out, args.edit_retain) == (config["held_out"], config["edit_retain"])
        # The published protocols come first; the preset adds those still to be run.
        assert args.protocols[: len(config["protocols"])] == config["protocols"]
    # A flag given with the preset wins over the preset's.
    args = build_parser().parse_args(_facts_preset([*argv, "--seeds", "7"]))
    assert args.seeds == [7] and args.held_out == 0.5


def test_a_sweep_points_weight_edits_to_the_facts_grid():
    pointer = "neuroplastic sweep --dataset facts --out DIR --grid removal="
    with pytest.raises(NeuroplasticError, match=pointer):
        plan_sweep(ExperimentConfig(**TINY_RUN), [0], grid={"removal": ["neurons", "graddiff"]})
