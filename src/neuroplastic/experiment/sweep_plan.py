"""A sweep's plan: its cells (mode, method, grid point) and seeds, every run's settings checked.

Light on purpose (no torch): the command line checks a whole sweep's settings with it before
the heavy imports, and :func:`neuroplastic.experiment.sweep.run_sweep` runs what it plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from neuroplastic.config import ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.facts_config import WEIGHT_EDITS


def cell_name(mode: str, method: str, point: dict[str, Any] | None = None) -> str:
    """``{mode}-{method}``, then ``_{key}={value}`` per grid axis (``--grid``), in order: one
    directory name, a value's path separators percent-encoded (``dataset=data/x`` ->
    ``dataset=data%2Fx``), so that no grid value puts a cell's runs outside the sweep."""
    return f"{mode}-{method}" + "".join(f"_{k}={path_safe(v)}" for k, v in (point or {}).items())


def path_safe(value: Any) -> str:
    """``value`` as text that stays one path component: ``%``, ``/``, ``\\`` and NUL
    percent-encoded."""
    text = str(value).replace("%", "%25")
    for separator in ("/", "\\", "\0"):
        text = text.replace(separator, f"%{ord(separator):02X}")
    return text


def grid_points(grid: dict[str, Sequence[Any]] | None) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first axis slowest ([{}] for no grid)."""
    points: list[dict[str, Any]] = [{}]
    for key, values in (grid or {}).items():
        points = [{**point, key: value} for point in points for value in values]
    return points


#: settings a grid cannot vary: they name the sweep's own axes, or change what a run is
NOT_GRID = ("seed", "mode", "method", "device", "device_map", "save_checkpoints")


def _check_grid(grid: dict[str, list[Any]]) -> None:
    known = set(ExperimentConfig.__dataclass_fields__)
    for key, values in grid.items():
        if key in NOT_GRID:
            hint = {"seed": "--seeds", "mode": "--mode a,b", "method": "--method a,b"}
            raise NeuroplasticError(
                f"--grid {key}: not a grid axis"
                + (f"; give {hint[key]} instead" if key in hint else " (an output option)")
            )
        if key not in known:
            raise NeuroplasticError(
                f"--grid {key}: unknown setting; known: {', '.join(sorted(known - set(NOT_GRID)))}"
            )
        if not values or len(set(map(repr, values))) != len(values):
            raise NeuroplasticError(f"--grid {key}: give distinct values, e.g. {key}=a,b")
        edits = [v for v in values if key == "removal" and v in WEIGHT_EDITS]
        if edits:
            # ExperimentConfig would refuse them too, as unknown removals: say where they live.
            raise NeuroplasticError(
                f"--grid removal={edits[0]}: gradient difference and RMU are removals of the "
                "facts study, not of the NER / LM runs (whose removals are neurons, leace, "
                "direction); add --dataset facts: neuroplastic sweep --dataset facts --out DIR "
                "--grid removal=neurons,graddiff,rmu"
            )


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a sweep, in order: ``(cell, seed, config)``; each cell's settings."""

    runs: list[tuple[str, int, ExperimentConfig]]
    settings: dict[str, dict[str, Any]]
    modes: list[str]
    methods: list[str]
    grid: dict[str, list[Any]]


def plan_sweep(
    base: ExperimentConfig,
    seeds: Sequence[int],
    modes: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    grid: dict[str, Sequence[Any]] | None = None,
) -> SweepPlan:
    """Every (cell, seed) run with its settings, each checked: raises on the first that is not
    valid, before anything runs."""
    if base.task != "ner" and grid:
        raise NeuroplasticError(
            "--grid compares the retrainer's choices by entity F1, so it needs --task ner; "
            "sweep --task lm over --seeds (and --mode, --method) without it"
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise NeuroplasticError(f"give distinct seeds, e.g. --seeds 0,1,2; got {list(seeds)}")
    modes, methods = list(modes or [base.mode]), list(methods or [base.method])
    for flag, values in (("--mode", modes), ("--method", methods)):
        twice = next((v for v in values if values.count(v) > 1), None)
        if twice is not None:
            raise NeuroplasticError(
                f"{flag} {twice} is given twice; give each value once (one cell each)"
            )
    grid = {key: list(values) for key, values in (grid or {}).items()}
    _check_grid(grid)
    runs: list[tuple[str, int, ExperimentConfig]] = []
    settings: dict[str, dict[str, Any]] = {}
    identities: dict[str, str] = {}  # a cell's settings as a run holds them -> the cell
    for mode in modes:
        for method in methods:
            for point in grid_points(grid):
                cell = cell_name(mode, method, point)
                if cell in settings:
                    raise NeuroplasticError(
                        f"two cells of the sweep would share the directory {cell!r} "
                        f"(--grid values {settings[cell]} and {point}); give grid values that "
                        "differ"
                    )
                settings[cell] = {"mode": mode, "method": method, **point}
                for seed in seeds:
                    config = replace(base, mode=mode, method=method, seed=seed, **point)
                    runs.append((cell, seed, config))
                # Values spelled differently may be one setting (removal_layers 0+1 and 1+0).
                same = identities.setdefault(config.identity_hash(), cell)
                if same != cell:
                    raise NeuroplasticError(
                        f"the sweep's cells {same!r} and {cell!r} are the same run: their "
                        "--grid values are one setting spelled two ways; give each value once"
                    )
    return SweepPlan(runs, settings, modes, methods, grid)
