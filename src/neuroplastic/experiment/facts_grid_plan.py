"""A grid of facts studies (``neuroplastic facts --grid``): its cells, each one's settings built
and checked before any model loads.

A cell is an ordinary facts study in ``DIR/<key>=<value>[_<key>=<value>...]/``, the directory
``neuroplastic facts --out`` that path with the cell's flags would make, so studies run one at
a time are gathered by the grid later without recomputing anything.

Light on purpose (no torch): the command line plans with it before the heavy imports, and
:func:`neuroplastic.experiment.facts_grid.run_facts_grid` runs what it plans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.sweep_plan import grid_points, path_safe
from neuroplastic.facts_config import SPLIT_SETTINGS, FactsConfig, flag_of

#: The grid's own file in its directory: the cells' measures side by side.
COMPARISON_FILE = "comparison.json"
#: Settings a grid cannot vary, and why: each names the flag that gives it instead.
NOT_GRID: dict[str, str] = {
    "seed": "seeds are the unit of replication across every cell: give --seeds",
    "device": "where the grid runs, not what it studies: give --device",
    "model": "the grid loads one model for all its cells (and seeds of different models "
    "are not paired): run one grid per --model, each into its own --out",
    **{
        name: f"{name} is a study's growable list (a rerun adds its states beside the others "
        f"in the same directory), so every cell takes all of it: give {flag_of(name)} {unit}"
        for name, unit in (
            (f.name, f.metadata["unit"])
            for f in fields(FactsConfig)
            if f.name in ("protocols", "best_case_lrs", "best_case_adapters")
        )
    },
}


@dataclass(frozen=True)
class FactsCell:
    """One cell: its directory name under the grid's, its grid values, its settings."""

    name: str
    point: dict[str, Any]
    config: FactsConfig


@dataclass(frozen=True)
class FactsGridPlan:
    """Every cell of a grid in order (the first axis slowest), the grid's typed values, and
    the settings every cell starts from."""

    cells: list[FactsCell]
    grid: dict[str, list[Any]]
    base: FactsConfig

    def split_groups(self) -> list[list[str]]:
        """The cells that split each seed's facts into the same T, V and held-out facts, in
        groups (the split depends on the seed and :data:`SPLIT_SETTINGS` only)."""
        groups: dict[tuple, list[str]] = {}
        for cell in self.cells:
            key = tuple(getattr(cell.config, name) for name in SPLIT_SETTINGS)
            groups.setdefault(key, []).append(cell.name)
        return list(groups.values())


def cell_name(point: Mapping[str, Any]) -> str:
    """``key=value`` per grid axis joined by ``_`` (``removal=rmu_rmu_layer=7``), a tuple
    spelled with ``+`` as on the command line, each value one path component."""
    return "_".join(f"{key}={path_safe(value_text(value))}" for key, value in point.items())


def value_text(value: Any) -> str:
    """A grid value as the command line spells it: ``10+11+12`` for a tuple."""
    return "+".join(map(str, value)) if isinstance(value, tuple) else str(value)


def typed_value(key: str, value: Any) -> Any:
    """A grid value as its setting's type: text is parsed (``1e-5``, ``10+11+12`` for a tuple
    of ints), a value already of the type is kept. Raises naming the setting and the value."""
    default = _defaults()[key]
    if isinstance(default, tuple):
        parts = value.split("+") if isinstance(value, str) else value
        try:
            return tuple(int(part) for part in parts)
        except (TypeError, ValueError):
            raise NeuroplasticError(
                f"--grid {key}={value_text(value)}: {key} takes whole numbers joined by +, "
                f"e.g. {key}=0+1,1+2"
            ) from None
    if isinstance(value, str) and not isinstance(default, str):
        try:
            return type(default)(value)
        except ValueError:
            raise NeuroplasticError(
                f"--grid {key}={value}: {value!r} is not {_KINDS[type(default)]}; {key} "
                f"takes values like {default!r}"
            ) from None
    if isinstance(default, float) and isinstance(value, int):
        return float(value)  # 1 and 1.0 are one learning rate
    if type(value) is not type(default):
        raise NeuroplasticError(
            f"--grid {key}={value!r}: {key} takes {_KINDS[type(default)]}, like {default!r}"
        )
    return value


#: How a message names each type of setting (the tuple is handled on its own).
_KINDS = {int: "a whole number", float: "a number", str: "a word"}


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(FactsConfig)}


def _check_axis(key: str, values: Sequence[Any]) -> list[Any]:
    """The axis's values typed, or a refusal naming the setting."""
    if key in NOT_GRID:
        raise NeuroplasticError(f"--grid {key}: not a grid axis; {NOT_GRID[key]}")
    known = sorted(set(_defaults()) - set(NOT_GRID))
    if key not in _defaults():
        raise NeuroplasticError(
            f"--grid {key}: not a facts study setting; give one of {', '.join(known)}"
        )
    typed = [typed_value(key, value) for value in values]
    if not typed or len(set(typed)) != len(typed):
        raise NeuroplasticError(
            f"--grid {key}: give distinct values, each once (one cell each), e.g. {key}=a,b; "
            f"got {','.join(map(value_text, typed))}"
        )
    return typed


def _cell_config(base: FactsConfig, name: str, point: dict[str, Any]) -> FactsConfig:
    """The cell's settings, checked: a refusal names the cell and the setting at fault."""
    try:
        return replace(base, **point)
    except NeuroplasticError as error:
        why = str(error).removeprefix("facts study: ")
        raise NeuroplasticError(
            f"--grid cell {name}: {why}; change that --grid value or the flags every cell "
            "shares, then rerun (nothing has run)"
        ) from None


def plan_facts_grid(base: FactsConfig, grid: Mapping[str, Sequence[Any]]) -> FactsGridPlan:
    """Every cell of the grid over ``base`` (values as text or typed), each one's settings
    built and checked: raises on the first that is not valid, before anything runs."""
    if not grid:
        raise NeuroplasticError("a facts grid needs an axis: give --grid KEY=V1,V2")
    axes = {key: _check_axis(key, values) for key, values in grid.items()}
    cells = []
    for point in grid_points(axes):
        name = cell_name(point)
        cells.append(FactsCell(name, point, _cell_config(base, name, point)))
    return FactsGridPlan(cells, axes, base)
