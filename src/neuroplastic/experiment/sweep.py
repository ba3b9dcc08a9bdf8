"""Seeds as the unit of replication: one run per (mode, method, seed), then intervals across seeds.

    DIR/{mode}-{method}/seed-{s}/    an ordinary run directory (resumable; finished ones skipped)
    DIR/sweep.json                   per cell, mean and 95% t-interval across seeds of each measure
    DIR/report.html                  the same, with recovery curves (report.sweep_report)

Each measure is computed per run (:func:`run_measures`) and only then aggregated, so an interval
is over independent runs, never over neurons of one model. Because both arms of a run are paired
(same batches, dropout and schedule), the concept-minus-random difference is computed per seed
first and its interval is the paired one. The same holds for the prediction of where the
concept goes (:mod:`neuroplastic.analysis.predict`): each run's AUC and precision at k per predictor
and ground truth, then their mean and interval across seeds
(:func:`neuroplastic.analysis.predict.across_seeds`). A chase (``--rounds``) keeps these measures
for round 1 and adds each round's (:data:`CHASE_MEASURES`, a seed that stopped early missing from
the later rounds); a pre-emption (``--preempt``) each arm's recovery and the paired
preempt-minus-control (:data:`PREEMPT_MEASURES`).

What is computed from loaded results lives in :mod:`neuroplastic.analysis`: each run's measures
(:mod:`~neuroplastic.analysis.one_run`), their declarations (:mod:`~neuroplastic.analysis.measures`)
and the intervals across seeds (:mod:`~neuroplastic.analysis.across_seeds`,
:mod:`~neuroplastic.analysis.across_rounds`, :mod:`~neuroplastic.analysis.across_predictions`,
:mod:`~neuroplastic.analysis.best_case`); they are importable from here as they always were.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuroplastic.analysis.across_predictions import causal_across_seeds as causal_across_seeds
from neuroplastic.analysis.across_predictions import (
    prediction_across_seeds as prediction_across_seeds,
)
from neuroplastic.analysis.across_rounds import chase_across_seeds as chase_across_seeds
from neuroplastic.analysis.across_rounds import preempt_across_seeds as preempt_across_seeds
from neuroplastic.analysis.across_seeds import _across as _across
from neuroplastic.analysis.across_seeds import _paired_across as _paired_across
from neuroplastic.analysis.across_seeds import _readability_across as _readability_across
from neuroplastic.analysis.across_seeds import _readable_across as _readable_across
from neuroplastic.analysis.across_seeds import aggregate
from neuroplastic.analysis.across_seeds import savings_across_seeds as savings_across_seeds
from neuroplastic.analysis.best_case import axis_differences, best_cases
from neuroplastic.analysis.intervals import interval as interval
from neuroplastic.analysis.measures import BOUNDS as BOUNDS
from neuroplastic.analysis.measures import CENSORED as CENSORED
from neuroplastic.analysis.measures import (
    CHASE_MEASURES,
    PREEMPT_MEASURES,
    SAVINGS_MEASURES,
    measure_table,
)
from neuroplastic.analysis.measures import (
    MARGINS as MARGINS,
)
from neuroplastic.analysis.measures import (
    MEASURES as MEASURES,
)
from neuroplastic.analysis.measures import RECOVERY_STEPS as RECOVERY_STEPS
from neuroplastic.analysis.one_run import chase_measures as chase_measures
from neuroplastic.analysis.one_run import measures_of_run
from neuroplastic.analysis.one_run import preempt_measures as preempt_measures
from neuroplastic.config import CONCEPT_ARM, NAIVE_ARM, ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.pipeline import run_experiment
from neuroplastic.experiment.sweep_plan import plan_sweep
from neuroplastic.io import atomic_write_json
from neuroplastic.progress import report_line
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.rundir import RunDir, directory_kind
from neuroplastic.store.shared_base import find_shared_base

if TYPE_CHECKING:
    from neuroplastic.experiment.ray_executor import RayExecutor


def run_sweep(
    base: ExperimentConfig,
    out: str | Path,
    seeds: Sequence[int],
    modes: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    top: int | float = 0.01,
    progress: bool = True,
    log: Callable[[str], Any] = report_line,
    grid: dict[str, Sequence[Any]] | None = None,
    share_base: bool = True,
    executor: RayExecutor | None = None,
    only_finished: bool = False,
) -> dict[str, Any]:
    """Run (or resume) every cell of the sweep into ``out``; write and return ``sweep.json``.

    Cells of a seed that differ only in settings acting after base fine-tuning
    (``AFTER_BASE``: mode, method, retraining...) share its base weights, trained by the first
    and loaded by the others (``share_base=False``: each trains its own; the results are the
    same, the time is not).

    ``only_finished``: run nothing; aggregate the runs already finished (a sweep still running
    elsewhere, or cut short), cells without any left out, and say in ``incomplete`` which
    seeds each cell lacks.

    ``executor``: None runs one run after another in this process; a
    :class:`~neuroplastic.experiment.ray_executor.RayExecutor` runs them as parallel Ray tasks
    (the base shared in two waves), with the same results.

    A cell is a mode, a method and a point of ``grid`` (``{setting: [values]}``, every
    combination: ``--grid relearn_lr=1e-5,1e-4,1e-3``). Every cell's settings are checked
    before the first run starts. With a grid, ``best_case`` gives, per axis, the retrainer's
    best choice made per seed (:func:`best_cases`)."""
    # Every cell and seed is checked (the config validates itself) before anything runs.
    plan = plan_sweep(base, seeds, modes, methods, grid)
    planned, settings, modes, methods, grid = (
        plan.runs,
        plan.settings,
        plan.modes,
        plan.methods,
        plan.grid,
    )
    out = Path(out)
    if directory_kind(out) == "run":
        raise NeuroplasticError(
            f"--out {out} is a run directory (made by `neuroplastic run`), not a sweep's; give a "
            "new directory for the sweep (each of its runs gets one inside it)"
        )
    # Cells of one seed that differ only after base fine-tuning fine-tune the same base: it is
    # trained once and loaded by the others (:mod:`neuroplastic.store.shared_base`).
    siblings: dict[tuple[int, str], list[tuple[Path, ExperimentConfig]]] = {}
    for cell, seed, config in planned:
        siblings.setdefault(_base_group(config), []).append((out / cell / f"seed-{seed}", config))
    runs: dict[str, dict[int, Path]] = {}
    for cell, seed, _ in planned:
        runs.setdefault(cell, {})[seed] = out / cell / f"seed-{seed}"
    if only_finished:
        missing: dict[str, list[int]] = {}
        for cell, seed, config in planned:
            if not _finished(runs[cell][seed], config):
                missing.setdefault(cell, []).append(seed)
                del runs[cell][seed]
        runs = {cell: paths for cell, paths in runs.items() if paths}
        if not runs:
            raise NeuroplasticError(f"{out}: no run of this sweep has finished yet")
    elif executor is None:
        for cell, seed, config in planned:
            path = out / cell / f"seed-{seed}"
            if _finished(path, config):
                log(f"[sweep] {cell} seed {seed}: done ({path})")
                continue
            log(f"[sweep] {cell} seed {seed}: {path}")
            group = siblings[_base_group(config)] if share_base else [(path, config)]
            earlier, keep = _base_sources(group, path, config)
            run_experiment(
                config, path, progress=progress, log=log, base_from=earlier, keep_base=keep
            )
    else:
        for wave in _waves(planned, out, siblings if share_base else None, log):
            executor.run(wave)
    if not only_finished:  # every cell is finished: no base is needed any more
        for group in siblings.values():
            for path, _ in group:
                _drop_kept_base(path)
    measured = {
        cell: {seed: run_measures(path, top=top) for seed, path in paths.items()}
        for cell, paths in runs.items()
    }
    result = {
        "config": base.to_dict(),
        "seeds": list(seeds),
        "modes": modes,
        "methods": methods,
        "measures": measure_table(base.task).descriptions,
        "margins": measure_table(base.task).margins,
        **({"chase_measures": CHASE_MEASURES} if base.rounds > 1 else {}),
        **({"preempt_measures": PREEMPT_MEASURES} if base.preempt else {}),
        **({"savings_measures": SAVINGS_MEASURES} if base.naive else {}),
        "cells": {cell: aggregate(list(per_seed.values())) for cell, per_seed in measured.items()},
    }
    if only_finished:
        result["incomplete"] = missing
    if grid:
        result["grid"] = grid
        result["settings"] = {cell: v for cell, v in settings.items() if cell in measured}
        result["best_case"] = {
            axis: best_cases(measured, result["settings"], axis)
            for axis in grid
            if len(grid[axis]) > 1
        }
        result["along_axis"] = {
            axis: axis_differences(measured, result["settings"], axis)
            for axis in grid
            if len(grid[axis]) > 1
        }
    atomic_write_json(out / "sweep.json", result)
    return result


def _base_group(config: ExperimentConfig) -> tuple[int, str]:
    """The runs that fine-tune one base: a seed and the settings the base depends on."""
    return config.seed, json.dumps(config.base_identity(), sort_keys=True)


def _base_sources(
    group: Sequence[tuple[Path, ExperimentConfig]], path: Path, config: ExperimentConfig
) -> tuple[list[Path], bool]:
    """For the run at ``path`` of a base ``group`` (in sweep order): the earlier runs it may
    load its bases from, and whether it should keep its own base weights (it trains one that
    no earlier run has left, and a later run of the group still has to run)."""
    index = [p for p, _ in group].index(path)
    earlier = [p for p, _ in group[:index]]
    later = [(p, c) for p, c in group[index + 1 :] if not _finished(p, c)]
    trains = not _bases_left(earlier, config)
    return earlier, bool(later) and trains


Wave = list[tuple[str, ExperimentConfig, Path, list[Path], bool]]


def _waves(
    planned: Sequence[tuple[str, int, ExperimentConfig]],
    out: Path,
    siblings: dict[tuple[int, str], list[tuple[Path, ExperimentConfig]]] | None,
    log: Callable[[str], Any],
) -> list[Wave]:
    """The unfinished runs in two waves of parallel runs: first, of each group that fine-tunes
    one base and has no base left by an earlier run, the first unfinished run (keeping its base
    when others wait for it); then all the others, loading it. Without ``siblings`` (no
    sharing), one wave."""
    first: Wave = []
    rest: Wave = []
    leads: set[tuple[int, str]] = set()
    for cell, seed, config in planned:
        path, label = out / cell / f"seed-{seed}", f"{cell} seed {seed}"
        if _finished(path, config):
            log(f"[sweep] {label}: done ({path})")
            continue
        if siblings is None:
            rest.append((label, config, path, [], False))
            continue
        key = _base_group(config)
        group = [p for p, _ in siblings[key] if p != path]
        left = _bases_left(group, config)
        if key in leads or left:
            rest.append((label, config, path, group, False))
        else:
            leads.add(key)
            waiting = any(not _finished(p, c) for p, c in siblings[key] if p != path)
            first.append((label, config, path, group, waiting))
    return [wave for wave in (first, rest) if wave]


def _bases_left(candidates: Sequence[Path], config: ExperimentConfig) -> bool:
    """Whether ``candidates`` hold every base ``config``'s run needs (its naive base too)."""
    arms = [CONCEPT_ARM, *([NAIVE_ARM] if config.naive else [])]
    return all(find_shared_base(candidates, config, arm) is not None for arm in arms)


def _drop_kept_base(path: Path) -> None:
    """Delete the base weights a finished run kept for its siblings."""
    run = RunDir(path)
    if run.summary_path.is_file() and any(run.state_dir.glob("*/base.safetensors")):
        with Checkpointer(run) as store:
            store.release()


def _finished(path: Path, config: ExperimentConfig) -> bool:
    """A finished run of exactly these settings (another config is refused by the run)."""
    run = RunDir(path)
    if not (run.summary_path.is_file() and run.config_path.is_file()):
        return False
    existing = ExperimentConfig.from_run(run.config(), source=str(run.config_path))
    return not config.differences(existing)


# -- one run -----------------------------------------------------------------------------------
def run_measures(run_dir: str | Path, top: int | float = 0.01) -> dict[str, Any]:
    """The sweep's measures of the finished run in ``run_dir``
    (:func:`~neuroplastic.analysis.one_run.measures_of_run`)."""
    return measures_of_run(RunDir(run_dir), top)
