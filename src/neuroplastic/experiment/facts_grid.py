"""A grid of facts studies run together (``neuroplastic facts --grid``), and their comparison.

    plan every cell (settings checked) ──► one model load ──► for each seed, for each cell:
    that cell's seed, resumable (:func:`~neuroplastic.experiment.facts_study.run_facts_seed`)
      ──► each cell's ``facts.json`` ──► ``DIR/comparison.json``: the cells' measures side by side

Each cell is an ordinary study in ``DIR/<cell>/`` (:mod:`neuroplastic.experiment.facts_grid_plan`
names it): a study run alone into that directory is gathered here as it is, every finished
state skipped. Seeds are the outer loop and cells the inner one, so a grid stopped part way has
the same seeds finished in every cell, and its cells compare on equal terms when rerun to
gather what is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from neuroplastic.analysis.facts_measures import compared_measures
from neuroplastic.core.models import load_model
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_grid_plan import (
    COMPARISON_FILE,
    FactsCell,
    FactsGridPlan,
    plan_facts_grid,
)
from neuroplastic.experiment.facts_resumption import check_resumable
from neuroplastic.experiment.facts_study import (
    check_seeds,
    gainers_note,
    run_facts_seed,
    write_study,
)
from neuroplastic.facts_config import FactsConfig
from neuroplastic.io import atomic_write_bytes, atomic_write_json
from neuroplastic.progress import report_line


def run_facts_grid(
    base: FactsConfig,
    grid: Mapping[str, Sequence[Any]],
    seeds: Sequence[int],
    root: str | Path,
    log: Callable[[str], None] = report_line,
    model: Any | None = None,
) -> dict[str, Any]:
    """Every cell of ``grid`` over ``base`` for every seed (seeds outer), each cell's
    ``facts.json``, then ``root/comparison.json``. Every cell's settings, and those of every
    seed already in its directory, are checked before the model loads (or ``model`` is
    used). Returns ``{"comparison": ..., "studies": {cell: its facts.json}}``."""
    plan = plan_facts_grid(base, grid)
    check_seeds(seeds)
    root = Path(root)
    _check_grid_root(root)
    for cell in plan.cells:
        check_resumable(cell.config, seeds, root / cell.name)
    if model is None:
        model = load_model(base.model, device=base.device)
    for cell in plan.cells:
        note = gainers_note(cell.config)
        if note:
            log(f"{cell.name}: {note}")
    summaries: dict[str, list[dict[str, Any]]] = {cell.name: [] for cell in plan.cells}
    seconds = dict.fromkeys(summaries, 0.0)
    for seed in seeds:
        for index, cell in enumerate(plan.cells, 1):
            log(f"grid: seed {seed}, cell {index}/{len(plan.cells)} {cell.name}")
            started = time.time()
            _share_known_facts(root, plan.cells, cell)
            summaries[cell.name].append(
                run_facts_seed(
                    replace(cell.config, seed=seed),
                    root / cell.name,
                    model=model,
                    log=lambda line, name=cell.name: log(f"{name}: {line}"),
                )
            )
            seconds[cell.name] += time.time() - started
    studies = {
        cell.name: write_study(
            cell.config, seeds, root / cell.name, summaries[cell.name], seconds[cell.name]
        )
        for cell in plan.cells
    }
    comparison = comparison_of(plan, seeds, studies)
    atomic_write_json(root / COMPARISON_FILE, comparison)
    return {"comparison": comparison, "studies": studies}


def _check_grid_root(root: Path) -> None:
    """A grid's directory holds cells, not a study of its own: refuse one that is a study."""
    own = [name for name in ("known.json", "facts.json") if (root / name).exists()]
    own += sorted(p.name + "/" for p in root.glob("seed-*") if p.is_dir())
    if own:
        raise NeuroplasticError(
            f"{root} holds a facts study ({', '.join(own[:3])}), and a grid puts its studies "
            f"in subdirectories of --out: give another --out, or move that study to "
            f"{root}/<cell> (e.g. removal=neurons) to have the grid gather it"
        )


def _share_known_facts(root: Path, cells: Sequence[FactsCell], cell: FactsCell) -> None:
    """Give ``cell`` a sibling's ``known.json`` when it has none: which facts the base model
    knows depends on the model and the fact pool only (the file records both), so every
    cell would ask the same questions of the same weights for the same answer; asking them
    once spares a pass over the whole pool per cell."""
    target = root / cell.name / "known.json"
    if target.exists():
        return
    identity = {"model": cell.config.model, "n_cities": cell.config.n_cities}
    for other in cells:
        source = root / other.name / "known.json"
        if other is cell or not source.exists():
            continue
        payload = source.read_bytes()
        recorded = json.loads(payload)["identity"]
        if {key: recorded[key] for key in identity} == identity:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, payload)
            return


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def comparison_of(
    plan: FactsGridPlan, seeds: Sequence[int], studies: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """``comparison.json``: the grid, the seeds, the settings every cell shares, which cells
    share each seed's T/V split, the measures compared (those some cell has, in column
    order) and per cell its grid values and those measures' intervals, copied from its
    ``facts.json``."""
    names = [
        name
        for name in compared_measures(plan.base.protocols)
        if any(name in study["measures"] for study in studies.values())
    ]
    shared = {**plan.base.to_dict(), "seed": None}
    for key in plan.grid:
        shared.pop(key)
    return {
        "grid": {key: [_jsonable(v) for v in values] for key, values in plan.grid.items()},
        "seeds": list(seeds),
        "settings": shared,
        "split_groups": plan.split_groups(),
        "measures": names,
        "cells": {
            cell.name: {
                "settings": {key: _jsonable(v) for key, v in cell.point.items()},
                "measures": {
                    name: studies[cell.name]["measures"][name]
                    for name in names
                    if name in studies[cell.name]["measures"]
                },
            }
            for cell in plan.cells
        },
    }
