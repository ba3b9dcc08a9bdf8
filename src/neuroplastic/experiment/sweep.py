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
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuroplastic.analysis.intervals import censored_interval, interval, paired
from neuroplastic.config import NAIVE_ARM, ExperimentConfig
from neuroplastic.core.curves import (
    NEITHER_REACHED,
    RECOVERY_TARGET,
    SAVINGS_TARGETS,
    SHARE_STEPS,
    recovery,
    savings,
)
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.pipeline import run_experiment
from neuroplastic.experiment.sweep_plan import plan_sweep
from neuroplastic.io import atomic_write_json
from neuroplastic.progress import report_line
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.rundir import RunDir, directory_kind, stage_round
from neuroplastic.store.shared_base import find_shared_base
from neuroplastic.store.summary import Summary

if TYPE_CHECKING:
    from neuroplastic.experiment.ray_executor import RayExecutor

#: the per-run measures, in reading order, with what each one means
MEASURES = {
    "drop_at_pruning": "concept F1 lost at pruning (base - pruned)",
    "steps_to_recover_90": "first crossing: retraining steps until concept F1 first reaches "
    "90% of base (interpolated between the evaluations of the run's grid), whether or not it "
    "stays there; a run that never gets there is censored: counted, and the mean becomes a "
    "lower bound (the budget for that run)",
    "lasting_recovery_90": "lasting recovery: retraining steps after which every evaluation "
    "of the run's grid stays at or above 90% of base (interpolated from the last evaluation "
    "below); a run whose last evaluation is below is censored at its budget",
    **{
        f"share_recovered_{step}": f"share of the drop at pruning recovered after {step} "
        "retraining steps, (F1 - F1 pruned) / (F1 base - F1 pruned), interpolated between "
        "evaluations; undefined for an arm whose drop is under 10% of base (a control)"
        for step in SHARE_STEPS
    },
    "recovery_auc": "mean of concept F1 / base F1 over the retraining steps (1 = never lost)",
    "final_gap_to_base": "concept F1 after the last stage minus base",
    "drift_after_pruning": "concept F1 after the last stage minus at the pruned stage: on the "
    "control, where nothing concept-specific was removed, what retraining alone adds (the "
    "yardstick a converged base keeps near zero)",
    "relocation": "change of the top 1% neurons' saliency-weighted mean layer from the pruned "
    "stage to the last, every stage's top set drawn from one fixed population (alive at every "
    "stage, outside the removed set): movement while retraining (negative: earlier layers)",
    "removal_shift": "change of the top 1%'s mean layer from base to pruned, each stage taking "
    "its own top set: what removing the top tier does to 'the top neurons' with no training "
    "at all (not movement)",
    "primed_rho": "Spearman rho between a neuron's similarity to the concept before pruning "
    "and its saliency gain while retraining (partly mechanical: gain is measured from the "
    "pruned saliency that similarity also correlates with)",
    "primed_partial_rho": "partial Spearman rho of similarity to the concept with saliency at "
    "the last stage, given saliency at the pruned stage: priming without the mechanical part",
    "gainers_polysemantic": "share of the top 1% saliency gainers (pruned to last stage, over "
    "the neurons the arm and its control share) whose top tokens blend the concept with other "
    "labels at the last stage: the paper's polysemantic neurons",
    "gainers_polysemantic_excess": "that share minus the share among all the neurons counted: "
    "what being a top gainer adds to being polysemantic",
}
#: the steps a retrainer's best case minimises: to a recovery that lasts, not a first crossing
RECOVERY_STEPS = "lasting_recovery_90"
#: the range of the measures that have one (their intervals never leave it)
BOUNDS = {
    "drop_at_pruning": (-1.0, 1.0),
    "final_gap_to_base": (-1.0, 1.0),
    "drift_after_pruning": (-1.0, 1.0),
    "primed_rho": (-1.0, 1.0),
    "primed_partial_rho": (-1.0, 1.0),
    "gainers_polysemantic": (0.0, 1.0),
    "gainers_polysemantic_excess": (-1.0, 1.0),
}
F1_BOUNDS = (0.0, 1.0)
#: measures some runs may never reach (their censored runs are counted, never dropped)
CENSORED = ("steps_to_recover_90", "lasting_recovery_90")
#: the equivalence margin of each paired difference: "no difference" means inside it (TOST)
MARGINS = {
    "drop_at_pruning": 0.02,
    "steps_to_recover_90": 3.0,
    "lasting_recovery_90": 3.0,
    **{f"share_recovered_{step}": 0.05 for step in SHARE_STEPS},
    "recovery_auc": 0.02,
    "final_gap_to_base": 0.02,
    "drift_after_pruning": 0.02,
    "relocation": 0.25,
    "removal_shift": 0.25,
    "primed_rho": 0.1,
    "primed_partial_rho": 0.1,
    "gainers_polysemantic": 0.05,
    "gainers_polysemantic_excess": 0.05,
}


def _difference_bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """The range of a difference of two measures with range ``bounds``."""
    return None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])


#: a chase's (``--rounds``) per-run measures of every round, per arm
CHASE_MEASURES = {
    "before": "concept F1 just before the round's removal (base in round 1, else after the "
    "previous round's retraining)",
    "removed": "concept F1 right after the round's neurons were removed",
    "drop": "concept F1 lost at the round's removal: before - removed",
    "retrained": "concept F1 after the round's retraining",
    "steps_to_recover": "retraining steps from the round's start until concept F1 is back to 90% "
    "of its F1 just before the removal (interpolated); a seed whose round never gets there is "
    "censored: counted at the round's budget, and the mean becomes a lower bound",
    "recovery_auc": "mean of concept F1 / its F1 before the removal over the round's steps",
    "held": "neurons held after the round's removal (all rounds so far)",
    "others_retrained": "unweighted mean F1 of the other entity types (not the concept, not "
    "overall) after the round's retraining",
}
#: a pre-emption's (``--preempt``) per-run measures, per arm
PREEMPT_MEASURES = {
    "steps_to_recover_90": "retraining steps until concept F1 is back to 90% of base "
    "(interpolated); a seed that never gets there is censored at its budget",
    "recovery_auc": "mean of concept F1 / base F1 over the retraining steps",
    "pruned_f1": "concept F1 right after pruning",
    "last_f1": "concept F1 after the last stage",
    "others_pruned": "unweighted mean F1 of the other entity types (not the concept, not "
    "overall) right after pruning",
    "others_last": "the same after the last stage: what the removal costs the other types",
}


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
        "measures": MEASURES,
        "margins": MARGINS,
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


def _along(settings: dict[str, dict[str, Any]], axis: str) -> list[list[str]]:
    """The cells grouped by every setting but ``axis``, each group in grid order: cells that
    differ in ``axis`` alone."""
    groups: dict[tuple, list[str]] = {}
    for cell, values in settings.items():
        rest = tuple((k, repr(v)) for k, v in values.items() if k != axis)
        groups.setdefault(rest, []).append(cell)
    return list(groups.values())


def best_cases(
    measured: dict[str, dict[int, dict[str, Any]]],
    settings: dict[str, dict[str, Any]],
    axis: str,
) -> list[dict[str, Any]]:
    """The retrainer's best case over ``axis``, as the tamper-resistance literature reports a
    defence's worst case: for each group of cells that differ in ``axis`` alone, per seed the
    value that recovered the concept fastest (fewest steps to lasting recovery at 90% of base,
    :data:`RECOVERY_STEPS`; a seed where none got there is censored at the smallest budget)
    and the one that ended with the highest concept F1, then both across seeds. The choice is
    made per seed, after the fact: an upper bound on what a retrainer who tunes ``axis`` gets."""
    cases = []
    for cells in _along(settings, axis):
        if len(cells) < 2:
            continue
        seeds = sorted(set.intersection(*(set(measured[c]) for c in cells)))
        fastest, at_least, highest = [], [], []
        chosen_fastest, chosen_highest = [], []
        for seed in seeds:
            concept = {c: measured[c][seed]["arms"]["concept"] for c in cells}
            reached = {
                c: a[RECOVERY_STEPS] for c, a in concept.items() if a[RECOVERY_STEPS] is not None
            }
            # A cell that never got there within a budget shorter than the best steps may
            # still have been the fastest: then only a bound (its budget) is known.
            shorter = [
                _budget(a)
                for c, a in concept.items()
                if c not in reached
                and _budget(a) is not None
                and _budget(a) < min(reached.values(), default=math.inf)
            ]
            if reached and not shorter:
                best = min(reached, key=reached.__getitem__)
                fastest.append(reached[best])
                at_least.append(None)
                chosen_fastest.append(settings[best][axis])
            else:
                fastest.append(None)
                at_least.append(
                    min(shorter)
                    if reached
                    else min(_budget(a) or math.inf for a in concept.values())
                )
                chosen_fastest.append(None)
            finals = {c: _last_f1(measured[c][seed], a) for c, a in concept.items()}
            top = max(finals, key=finals.__getitem__)
            highest.append(finals[top])
            chosen_highest.append(settings[top][axis])
        cases.append(
            {
                "fixed": {k: v for k, v in settings[cells[0]].items() if k != axis},
                "values": [settings[c][axis] for c in cells],
                "cells": cells,
                "seeds": seeds,
                "fastest_recovery": censored_interval(fastest, at_least),
                "fastest_value": chosen_fastest,
                "highest_final_f1": interval(highest, bounds=F1_BOUNDS),
                "highest_value": chosen_highest,
            }
        )
    return cases


def axis_differences(
    measured: dict[str, dict[int, dict[str, Any]]],
    settings: dict[str, dict[str, Any]],
    axis: str,
) -> list[dict[str, Any]]:
    """Does ``axis`` move the measures beyond seed noise? For each group of cells that differ
    in ``axis`` alone, each other value's cell against the first value's (the reference, the
    grid's first value), per seed first and then across the seeds both have: every arm's
    :data:`MEASURES` and its F1 per stage and entity, as paired differences (value - reference;
    interval, the difference 80% power would detect and, for a measure with one, the
    equivalence test against :data:`MARGINS`). Seeds pair because a seed fixes the data, the
    split and the order of the batches in every cell."""
    cases = []
    for cells in _along(settings, axis):
        reference = cells[0]
        for cell in cells[1:]:
            seeds = sorted(set(measured[reference]) & set(measured[cell]))
            if not seeds:
                continue
            treated = [measured[cell][s]["arms"] for s in seeds]
            control = [measured[reference][s]["arms"] for s in seeds]
            arms = [a for a in control[0] if all(a in every for every in (*treated, *control))]
            cases.append(
                {
                    "fixed": {k: v for k, v in settings[cell].items() if k != axis},
                    "reference": settings[reference][axis],
                    "value": settings[cell][axis],
                    "cells": [reference, cell],
                    "seeds": seeds,
                    # base fine-tuning's steps to its plateau (a setting that changes training
                    # can change when the base stops)
                    "base_steps": paired(
                        [
                            _minus(
                                measured[cell][s]["base"].get("steps"),
                                measured[reference][s]["base"].get("steps"),
                            )
                            for s in seeds
                        ]
                    ),
                    "arms": {
                        arm: _arm_difference([t[arm] for t in treated], [c[arm] for c in control])
                        for arm in arms
                    },
                }
            )
    return cases


def _arm_difference(
    treated: Sequence[dict[str, Any]], control: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One arm's paired differences treated - control across seeds: every measure, and its F1
    at every stage and entity both have."""
    stages = [s for s in control[0]["f1"] if all(s in a["f1"] for a in (*treated, *control))]
    return {
        **{m: _paired_across(m, treated, control) for m in MEASURES},
        "f1": {
            stage: {
                entity: paired(
                    [
                        t["f1"][stage][entity] - c["f1"][stage][entity]
                        for t, c in zip(treated, control, strict=True)
                    ],
                    bounds=(-1.0, 1.0),
                )
                for entity in control[0]["f1"][stage]
            }
            for stage in stages
        },
    }


def _last_f1(run: dict[str, Any], arm: dict[str, Any]) -> float:
    """The concept F1 an arm ended round 1 with."""
    return float(list(arm["f1"].values())[-1][run["concept"]])


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
    arms = ["concept", *([NAIVE_ARM] if config.naive else [])]
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
    """The sweep's measures of one finished run, per arm, plus its stage scores and curves;
    of a chase (``--rounds``) these are round 1's, the paper's experiment, and ``chase`` has
    every round's; of a pre-emption (``--preempt``), ``preempt`` its arms' recovery."""
    from neuroplastic.analysis.arm_run import ArmRun, concept_token_ids
    from neuroplastic.analysis.layers import relocation
    from neuroplastic.analysis.polysemantic import control_pair_population
    from neuroplastic.analysis.reappearance import primed_neurons

    run = RunDir(run_dir)
    summary = Summary.read(run)
    concept = summary.concept
    metrics = run.metrics()
    embeddings = run.embeddings()
    arms: dict[str, Any] = {}
    # it never knew the concept: no recovery, its savings below
    compared = [arm for arm in summary.arms if arm != NAIVE_ARM]
    loaded_arms = {arm: ArmRun.load(run, arm) for arm in compared}
    # primed: each arm correlated over the same neurons as its control
    population = control_pair_population(loaded_arms)
    for arm, data in summary.arms.items():
        if arm == NAIVE_ARM:
            continue
        # Later rounds of a chase start from another model: they have their own measures.
        entries = [e for e in data.stages if stage_round(e.stage) in (0, 1)]
        stages = {entry.stage: entry for entry in entries}
        base_f1 = stages["base"].f1[concept]
        last = entries[-1]
        curve = _curve(metrics, arm, concept)
        recovered = recovery(curve, base_f1, RECOVERY_TARGET)
        loaded = loaded_arms[arm]
        moved = relocation(loaded.rankings(), loaded.ablated, top, loaded.start)
        can_prime = concept_token_ids(loaded.stages[loaded.first].stats, concept).numel() > 0
        primed = primed_neurons(loaded, embeddings, population=population) if can_prime else None
        blended = _polysemantic_gainers(loaded, population, top)
        arms[arm] = {
            "drop_at_pruning": base_f1 - stages["pruned"].f1[concept],
            "steps_to_recover_90": recovered["steps_to_recover"],
            "lasting_recovery_90": recovered["steps_to_lasting_recovery"],
            **{
                f"share_recovered_{step}": recovered["share_recovered"][str(step)]
                for step in SHARE_STEPS
            },
            "recovery_auc": recovered["auc"],
            "final_gap_to_base": last.f1[concept] - base_f1,
            "drift_after_pruning": last.f1[concept] - stages["pruned"].f1[concept],
            "relocation": moved.shift,
            "removal_shift": moved.removal_shift,
            "primed_rho": primed.rho if primed else math.nan,
            "primed_partial_rho": primed.partial_rho if primed else math.nan,
            "gainers_polysemantic": blended.get("gainers_share", math.nan),
            "gainers_polysemantic_excess": blended.get("excess", math.nan),
            "polysemantic_gainers": blended,
            "recovery": recovered,
            "f1": {entry.stage: entry.f1 for entry in entries},
            # per stage, per layer: where a linear probe reads the concept (none in older runs)
            "readable": {e.stage: e.readable for e in entries if e.readable},
            # per point, stage and layer: raw and sign-free AUC with the run's interval, the
            # probe fitted apart from the eraser's and the ranking's sentences (none in older
            # runs, whose probes were fitted on the probe sentences)
            "probes": _probes_by_point(entries),
            "curve": curve.to_dict(orient="list"),
        }
        if data.control is not None:
            arms[arm]["control"] = data.control
    measures = {
        "seed": summary.config["seed"],
        "concept": concept,
        # how base fine-tuning ended: a retraining that measures recovery needs a converged base
        "base": {k: (summary.base or {}).get(k) for k in ("steps", "stopped")},
        "arms": arms,
        # per predictor and truth, as the run's summary evaluated them (none in older runs)
        "prediction": summary.prediction or [],
        # per arm: the concept's score, and what ablating each candidate set costs it
        "causal": summary.causal or {},
    }
    if summary.chase is not None:
        measures["chase"] = chase_measures(summary)
    if summary.preempt is not None:
        measures["preempt"] = preempt_measures(summary)
    saved = summary.savings
    if saved is not None and "savings" in saved:  # (none while the naive arm has not retrained)
        # Recomputed from the curves (lasting recovery, every target), not read from the
        # summary: a run made before these measures gives the same numbers as a new one.
        relearned, naive = _curve(metrics, "concept", concept), _curve(metrics, NAIVE_ARM, concept)
        base_f1 = arms["concept"]["f1"]["base"][concept]
        until = summary.arms["concept"].stage("retrain-1").step
        targets = {
            str(share): savings(relearned, naive, share * base_f1, until)
            for share in SAVINGS_TARGETS
        }
        naive_base = saved["naive_base"]["f1"]
        measures["savings"] = {
            **{k: targets[str(RECOVERY_TARGET)].get(k) for k in SAVINGS_FIELDS},
            "targets": {
                share: {k: result.get(k) for k in (*SAVINGS_FIELDS, "first_crossing")}
                for share, result in targets.items()
            },
            # the arms must be equally good at everything but the concept
            "naive_minus_concept_base": {
                entity: naive_base[entity] - arms["concept"]["f1"]["base"][entity]
                for entity in naive_base
                if entity not in (concept, "overall") and entity in arms["concept"]["f1"]["base"]
            },
            "naive_base_f1": saved["naive_base"]["f1"][concept],
            "first_stage_f1": summary.arms[NAIVE_ARM].stage("retrain-1").f1[concept],
            "curve": _curve(metrics, NAIVE_ARM, concept).to_dict(orient="list"),
        }
    return measures


#: what a run's summary ``savings`` gives the sweep (:func:`neuroplastic.core.curves.savings`)
SAVINGS_FIELDS = (
    "target",
    "steps_relearned",
    "steps_naive",
    "naive_reached",
    "naive_budget",
    "savings",
    "bound",
    "area_between",
    "relearn_budget",
    "why_none",
)
#: the savings measures across seeds, with what each one means
SAVINGS_MEASURES = {
    "savings": "1 - steps(concept arm) / steps(naive arm) to lasting recovery at 90% of the "
    "concept arm's base F1 (``targets``: at 50%, 80% and 90%): 1 when relearning is immediate, "
    "0 when no faster than learning from nothing; a seed whose naive arm never got there for "
    "good is censored (at least its value at the naive arm's budget), one whose concept arm "
    "never got back there for good too (at most its value at that arm's budget)",
    "steps_relearned": "retraining steps of the concept arm to lasting recovery at that target",
    "steps_naive": "retraining steps of the naive arm (never taught the concept nor to refuse "
    "it, the same neurons held, the same batches) to lasting recovery at that target; "
    "censored at its budget",
    "area_between": "mean over the first stage of the concept arm's F1 minus the naive arm's",
    "naive_base_f1": "concept F1 of the naive base (fine-tuned with the concept's tokens out "
    "of its loss and its classes out of its softmax)",
    "naive_first_stage_f1": "concept F1 of the naive arm after the first retraining stage",
}


def savings_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:data:`SAVINGS_MEASURES` across the seeds that have them, at 90% of base and at every
    share of :data:`~neuroplastic.core.curves.SAVINGS_TARGETS` (``targets``); censored seeds
    are counted at their bound, never dropped
    (:func:`~neuroplastic.analysis.intervals.censored_interval`): a naive arm that never
    learned makes a seed's savings at least its value at the naive budget, a concept arm that
    never relearned at most its value at its own budget. ``naive_minus_concept_base``: per
    other entity type, the naive base's F1 minus the concept arm's base's, paired per seed."""
    present = [r["savings"] for r in runs if "savings" in r]
    result = {
        "seeds": [r["seed"] for r in runs if "savings" in r],
        **_savings_at(present),
        "naive_base_f1": interval([s["naive_base_f1"] for s in present], bounds=F1_BOUNDS),
        "naive_first_stage_f1": interval([s["first_stage_f1"] for s in present], bounds=F1_BOUNDS),
        "naive_curves": [s["curve"] for s in present],
    }
    if all("targets" in s for s in present):
        result["targets"] = {
            share: _savings_at([s["targets"][share] for s in present])
            for share in present[0]["targets"]
        }
        result["targets_reached"] = {
            share: {
                "concept": sum(s["targets"][share]["steps_relearned"] is not None for s in present),
                "naive": sum(s["targets"][share]["steps_naive"] is not None for s in present),
                "of": len(present),
            }
            for share in present[0]["targets"]
        }
    if all("naive_minus_concept_base" in s for s in present):
        entities = [e for e in present[0]["naive_minus_concept_base"]]
        result["naive_minus_concept_base"] = {
            e: paired(
                [s["naive_minus_concept_base"].get(e) for s in present],
                MARGINS["drop_at_pruning"],  # an F1 margin
                bounds=(-1.0, 1.0),
            )
            for e in entities
        }
    return result


def _savings_at(present: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Savings, each arm's steps and the area between the curves at one target, across seeds."""

    def bounded(kind: str) -> list[float | None]:
        return [s["savings"] if s["bound"] == kind else None for s in present]

    return {
        "savings": censored_interval(
            bounded("exact"),
            bounded("lower"),
            range_=(-math.inf, 1.0),
            at_most=bounded("upper"),
            unbounded=[s.get("why_none") == NEITHER_REACHED for s in present],
        ),
        "steps_relearned": censored_interval(
            [s["steps_relearned"] for s in present],
            [
                (s.get("relearn_budget") or s["naive_budget"])
                if s["steps_relearned"] is None
                else None
                for s in present
            ],
        ),
        "steps_naive": censored_interval(
            [s["steps_naive"] for s in present],
            [None if s["naive_reached"] else s["naive_budget"] for s in present],
        ),
        "area_between": interval([s["area_between"] for s in present], bounds=(-1.0, 1.0)),
    }


def chase_measures(summary: Summary) -> dict[str, Any]:
    """:data:`CHASE_MEASURES` of every round a chase ran, per arm, from its ``summary.json``;
    ``rounds`` the rounds asked for, ``rounds_run`` those run (fewer: stopped early)."""
    concept, chase = summary.concept, summary.chase
    # A round's retraining steps: what a round that never recovers is censored at.
    budget = float(summary.retraining_steps)
    rounds = []
    for record in chase["rounds"]:
        arms = {}
        for arm, entry in record["arms"].items():
            arms[arm] = {
                "before": (entry.get("before") or {}).get(concept, math.nan),
                "removed": entry["removed"][concept],
                "drop": entry.get("drop", math.nan),
                "retrained": entry["retrained"][concept],
                "steps_to_recover": _nan(entry["steps_to_recover"]),
                "recovery_auc": _nan(entry["recovery_auc"]),
                "held": entry["held"],
                "others_retrained": _others_mean(entry["retrained"], concept),
                "budget": budget,
            }
        rounds.append({"round": record["round"], "arms": arms})
    measures = {
        "rounds": summary.config.get("rounds", chase["rounds_run"]),
        "rounds_run": chase["rounds_run"],
        "stopped_early": chase.get("stopped_early"),
        "per_round": rounds,
    }
    once = chase.get("one_shot")
    if once:  # the same neurons removed at once from base: concept F1 after, minus the chase's
        measures["one_shot"] = {
            "retrained": once["one_shot"]["retrained"][concept],
            "drop": once["one_shot"]["drop"],
            "steps_to_recover": _nan(once["one_shot"]["steps_to_recover"]),
            "one_shot_minus_chase": once["one_shot_minus_chase"][concept],
            "budget": budget,
        }
    return measures


def preempt_measures(summary: Summary) -> dict[str, Any]:
    """:data:`PREEMPT_MEASURES` per arm of a pre-emption, from its ``summary.json``, and the
    preempt arm minus its control (``preempt-random``) in this run."""
    concept, preempt = summary.concept, summary.preempt
    budget = float(summary.retraining_steps)
    arms = {
        arm: {
            "steps_to_recover_90": _nan(data["steps_to_recover_90"]),
            "recovery_auc": _nan(data["recovery_auc"]),
            "pruned_f1": data["pruned"][concept],
            "last_f1": data["last"][concept],
            "others_pruned": _others_mean(data["pruned"], concept),
            "others_last": _others_mean(data["last"], concept),
            "budget": budget,  # what an arm that never recovers is censored at
        }
        for arm, data in preempt["recovery"].items()
    }
    treated, control = arms["preempt"], arms["preempt-random"]
    measures = {
        "predictor": preempt["predictor"],
        "count": preempt["count"],
        "overlap": preempt["overlap"],
        "arms": arms,
        "preempt_minus_control": {m: _minus(treated[m], control[m]) for m in PREEMPT_MEASURES},
    }
    if "preempt-oracle" in arms:
        oracle = arms["preempt-oracle"]
        measures["oracle_minus_control"] = {
            m: _minus(oracle[m], control[m]) for m in PREEMPT_MEASURES
        }
    return measures


def _polysemantic_gainers(loaded: Any, population: Any, top: int | float) -> dict[str, Any]:
    """:func:`~neuroplastic.analysis.polysemantic.polysemantic_gainers`, or nothing where the
    concept has no mixing band or no neuron is counted (its measures are then missing)."""
    from neuroplastic.analysis.polysemantic import polysemantic_gainers

    try:
        return polysemantic_gainers(loaded, population, top)
    except NeuroplasticError:
        return {}


def _others_mean(f1: dict[str, float], concept: str) -> float:
    """Unweighted mean F1 of the entity types other than ``concept`` (and not ``overall``)."""
    others = [v for e, v in f1.items() if e not in (concept, "overall")]
    return float(np.mean(others)) if others else math.nan


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _curve(metrics: pd.DataFrame, arm: str, concept: str) -> pd.DataFrame:
    """Concept F1 against retraining step (pruning is step 0), one row per evaluation, of
    round 1 (a chase's later rounds have their own measures)."""
    rows = metrics[(metrics["arm"] == arm) & (metrics["step"] >= 0)]
    rows = rows[rows["stage"].map(lambda s: stage_round(str(s)) == 1)]
    curve = pd.DataFrame({"step": rows["step"].astype(float), "f1": rows[f"f1_{concept}"]})
    return curve.sort_values("step", kind="stable").reset_index(drop=True)


def _minus(a: float | None, b: float | None) -> float:
    return math.nan if a is None or b is None else a - b


# -- across seeds ------------------------------------------------------------------------------
def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% interval across runs (seeds) of every measure and stage score, per arm, and
    of the per-seed concept-minus-random difference (paired, with the difference 80% power
    would detect and an equivalence test against :data:`MARGINS`). Runs that never recovered
    are censored (:func:`~neuroplastic.analysis.intervals.censored_interval`), never dropped."""
    arms = list(runs[0]["arms"])
    result: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "arms": {}}
    endings = [(r.get("base") or {}).get("stopped") for r in runs]
    result["base_stopped"] = {str(e): endings.count(e) for e in dict.fromkeys(endings)}
    for arm in arms:
        per_arm = [r["arms"][arm] for r in runs]
        stages = list(per_arm[0]["f1"])
        result["arms"][arm] = {
            **{m: _across(m, per_arm) for m in MEASURES},
            "f1": {
                stage: {
                    entity: interval([a["f1"][stage][entity] for a in per_arm], bounds=F1_BOUNDS)
                    for entity in per_arm[0]["f1"][stage]
                }
                for stage in stages
            },
            "grid": _grid(per_arm),
            "curves": [a["curve"] for a in per_arm],
        }
        readable = _readable_across(per_arm)
        if readable:
            result["arms"][arm]["readable"] = readable
        readability = _readability_across(per_arm)
        if readability:
            result["arms"][arm]["readability"] = readability
        kinds = sorted({a["control"] for a in per_arm if "control" in a})
        if kinds:
            result["arms"][arm]["control"] = kinds[0] if len(kinds) == 1 else kinds
    if "random" in arms:
        result["concept_minus_random"] = {
            m: _paired_across(
                m, [r["arms"]["concept"] for r in runs], [r["arms"]["random"] for r in runs]
            )
            for m in MEASURES
        }
    prediction = prediction_across_seeds(runs)
    if prediction:
        result["prediction"] = prediction
    causal = causal_across_seeds(runs)
    if causal:
        result["causal"] = causal
    if any("chase" in r for r in runs):
        result["chase"] = chase_across_seeds(runs)
    if any("preempt" in r for r in runs):
        result["preempt"] = preempt_across_seeds(runs)
    if any("savings" in r for r in runs):
        result["savings"] = savings_across_seeds(runs)
    return result


def _readable_across(per_arm: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage and layer, the concept probe's validation AUC across the seeds (an AUC: its
    interval kept in [0, 1]); the stages and layers every seed has."""
    tables = [a.get("readable") or {} for a in per_arm]
    stages = [s for s in tables[0] if all(s in t for t in tables)]
    return {
        stage: {
            layer: interval([t[stage][layer] for t in tables], bounds=F1_BOUNDS)
            for layer in tables[0][stage]
            if all(layer in t[stage] for t in tables)
        }
        for stage in stages
    }


def _probes_by_point(entries: Sequence[Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A run's stage-end probe readings regrouped per point (``resid_post``, ``mlp_out``), then
    stage, then layer; empty for a run made before they were recorded."""
    by_point: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in entries:
        for point, layers in (getattr(entry, "probes", None) or {}).items():
            if point != "split":
                by_point.setdefault(point, {})[entry.stage] = layers
    return by_point


def _readability_across(per_arm: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per point, stage and layer across the seeds: the sign-free readability
    (max(AUC, 1 - AUC)) and the raw AUC, each mean and interval (kept in [0, 1]), how many
    seeds' own interval holds 0.5, and ``at_chance``: the raw AUC's interval across seeds
    holds 0.5 and so does every seed's own. Only where every seed has the point, stage and
    layer; empty when a seed predates the readings."""
    tables = [a.get("probes") or {} for a in per_arm]
    if not all(tables):
        return {}
    result: dict[str, Any] = {}
    for point, stages in tables[0].items():
        if not all(point in t for t in tables):
            continue
        result[point] = {}
        for stage, layers in stages.items():
            if not all(stage in t[point] for t in tables):
                continue
            result[point][stage] = {}
            for layer in layers:
                if not all(layer in t[point][stage] for t in tables):
                    continue
                readings = [t[point][stage][layer] for t in tables]
                raw = interval([r["auc"] for r in readings], bounds=F1_BOUNDS)
                own = sum(r["low"] <= 0.5 <= r["high"] for r in readings)
                spans = raw["ci_low"] is None or raw["ci_low"] <= 0.5 <= raw["ci_high"]
                result[point][stage][layer] = {
                    "sign_free": interval([r["sign_free"] for r in readings], bounds=F1_BOUNDS),
                    "auc": raw,
                    "seeds_at_chance": own,
                    "at_chance": bool(spans and own == len(readings)),
                }
    return result


def _budget(arm: dict[str, Any]) -> float | None:
    """The last retraining step a run's arm was evaluated at (a censored run's lower bound)."""
    return (arm.get("recovery") or {}).get("budget")


def _across(measure: str, per_arm: Sequence[dict[str, Any]]) -> dict[str, Any]:
    values = [a[measure] for a in per_arm]
    if measure in CENSORED:
        budgets = [_budget(a) for a in per_arm]
        known = [b for b in budgets if b is not None]
        # steps lie in [0, budget]: a t-interval leaving them is replaced by the seeds' range
        bounds = (0.0, float(max(known))) if known else None
        return censored_interval(values, budgets, range_=bounds)
    return interval(values, bounds=BOUNDS.get(measure))


def _paired_across(
    measure: str, treated: Sequence[dict[str, Any]], control: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The per-seed difference treated - control of ``measure``, across seeds. Of a censored
    measure: a seed whose treated run never got there differs by at least its budget minus the
    control's number, one whose control never did by at most the treated number minus the
    control's budget, one where neither did by anything (the mean is then undetermined)."""
    pairs = list(zip(treated, control, strict=True))
    values = [_minus(t[measure], c[measure]) for t, c in pairs]
    if measure in CENSORED and any(t[measure] is None or c[measure] is None for t, c in pairs):
        result = censored_interval(
            values,
            [_minus(_budget(t), c[measure]) if t[measure] is None else None for t, c in pairs],
            at_most=[
                _minus(t[measure], _budget(c)) if c[measure] is None else None for t, c in pairs
            ],
            unbounded=[t[measure] is None and c[measure] is None for t, c in pairs],
        )
        result["margin"] = MARGINS.get(measure)
        return result
    return paired(values, MARGINS.get(measure), _difference_bounds(BOUNDS.get(measure)))


def _grid(per_arm: Sequence[dict[str, Any]]) -> list[float] | list[list[float]]:
    """The retraining steps the arm was evaluated at: one list when every seed had the same."""
    grids = [list((a.get("recovery") or {}).get("grid") or a["curve"]["step"]) for a in per_arm]
    return grids[0] if all(g == grids[0] for g in grids) else grids


def chase_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per round of a chase, per arm, mean and 95% t-interval across seeds of every
    :data:`CHASE_MEASURES`, and of the per-seed concept-minus-random difference (paired).

    A seed whose chase stopped before round r (``--stop-below``) has no number there: it counts
    as missing (``missing`` of the interval; ``seeds_reached`` lists the seeds that ran the
    round), so a later round's mean is over the seeds where the concept still came back
    enough to go on: compare rounds with that in mind."""
    seeds = [r["seed"] for r in runs]
    n_rounds = max(r["chase"]["rounds"] for r in runs if "chase" in r)
    by_seed = [
        {rec["round"]: rec["arms"] for rec in r["chase"]["per_round"]} if "chase" in r else {}
        for r in runs
    ]
    arms = list(dict.fromkeys(a for rounds in by_seed for arms in rounds.values() for a in arms))
    result = []
    one_shot = [(r.get("chase") or {}).get("one_shot") for r in runs]
    for round_ in range(1, n_rounds + 1):
        per_seed = [rounds.get(round_, {}) for rounds in by_seed]
        entry: dict[str, Any] = {
            "round": round_,
            "seeds_reached": [s for s, arms_ in zip(seeds, per_seed, strict=True) if arms_],
            "arms": {
                arm: {m: _across_rounds(m, [a.get(arm) for a in per_seed]) for m in CHASE_MEASURES}
                for arm in arms
            },
        }
        if {"concept", "random"} <= set(arms):
            pairs = [(a["concept"], a["random"]) if {"concept", "random"} <= set(a) else None
                     for a in per_seed]  # fmt: skip
            entry["concept_minus_random"] = {m: _chase_difference(m, pairs) for m in CHASE_MEASURES}
        result.append(entry)
    once = {}
    if any(one_shot):
        once = {
            "one_shot": {
                m: paired([o[m] if o else None for o in one_shot])
                if m == "one_shot_minus_chase"
                else _across_rounds(m, one_shot)
                for m in ("retrained", "drop", "steps_to_recover", "one_shot_minus_chase")
            }
        }
    return {
        **once,
        "rounds": n_rounds,
        "stopped_early": {
            str(r["seed"]): r["chase"]["stopped_early"]
            for r in runs
            if "chase" in r and r["chase"]["stopped_early"]
        },
        "per_round": result,
    }


#: the per-round measures a seed may never reach (censored at the round's budget)
STEPS_MEASURES = ("steps_to_recover", "steps_to_recover_90")


#: the range of the chase's and the pre-emption's F1 measures (their intervals never leave it)
ROUND_BOUNDS = {
    **{m: F1_BOUNDS for m in ("before", "removed", "retrained", "others_retrained")},
    **{m: F1_BOUNDS for m in ("pruned_f1", "last_f1", "others_pruned", "others_last")},
    "drop": (-1.0, 1.0),
}


def _across_rounds(measure: str, per_seed: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """One arm's ``measure`` across seeds (None: the seed did not run it); a round that never
    recovered is censored at its budget, never dropped (runs from before budgets were
    recorded count as missing)."""
    values = [a[measure] if a else None for a in per_seed]
    if measure not in STEPS_MEASURES:
        return interval(values, bounds=ROUND_BOUNDS.get(measure))
    at_least = [
        a.get("budget") if a and not math.isfinite(_nan(a[measure])) else None for a in per_seed
    ]
    return censored_interval(values, at_least)


def _chase_difference(measure: str, pairs: Sequence[tuple[dict, dict] | None]) -> dict[str, Any]:
    """concept - random of ``measure`` per seed (None: a seed without both arms); of a steps
    measure, a censored arm's seed bounded as :func:`_censored_differences` says."""
    values = [_minus(p[0][measure], p[1][measure]) if p else None for p in pairs]
    if measure not in STEPS_MEASURES:
        return interval(values, bounds=_difference_bounds(ROUND_BOUNDS.get(measure)))
    return censored_interval(values, **_censored_differences(measure, pairs))


def _censored_differences(
    measure: str, pairs: Sequence[tuple[dict, dict] | None]
) -> dict[str, list]:
    """:func:`censored_interval`'s bounds of treated - control of a steps measure, per seed:
    at least the treated budget minus the control's steps when the treated arm never
    recovered, at most the treated steps minus the control's budget when the control never
    did, unbounded when neither did (None: a seed without the pair)."""

    def censored(arm: dict) -> bool:
        return not math.isfinite(_nan(arm[measure]))

    at_least = [
        _minus(p[0].get("budget"), p[1][measure]) if p and censored(p[0]) else None for p in pairs
    ]
    at_most = [
        _minus(p[0][measure], p[1].get("budget"))
        if p and censored(p[1]) and not censored(p[0])
        else None
        for p in pairs
    ]
    unbounded = [bool(p and censored(p[0]) and censored(p[1])) for p in pairs]
    return {"at_least": at_least, "at_most": at_most, "unbounded": unbounded}


def _paired_steps(measure: str, pairs: Sequence[tuple[dict, dict]]) -> dict[str, Any]:
    """A paired difference across seeds (:func:`paired`, with its power and equivalence test);
    of a steps measure with a censored seed in either arm, the censored interval instead."""
    values = [_minus(t[measure], c[measure]) for t, c in pairs]
    if measure in STEPS_MEASURES and any(
        not math.isfinite(_nan(arm[measure])) for pair in pairs for arm in pair
    ):
        return censored_interval(values, **_censored_differences(measure, pairs))
    return paired(values, bounds=_difference_bounds(ROUND_BOUNDS.get(measure)))


def preempt_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% t-interval across seeds of every :data:`PREEMPT_MEASURES` per arm, of the
    per-seed preempt-minus-control difference (paired: same batches, same count per layer)
    and of the overlap of the two arms' extra neurons."""
    present = [r["preempt"] for r in runs if "preempt" in r]
    arms = list(present[0]["arms"])

    def control(p: dict[str, Any]) -> dict[str, Any]:
        return p["arms"]["preempt-random"]

    return {
        "predictor": present[0]["predictor"],
        "count": present[0]["count"],
        "seeds": [r["seed"] for r in runs if "preempt" in r],
        "overlap": interval([p["overlap"] for p in present]),
        "arms": {
            arm: {m: _across_rounds(m, [p["arms"][arm] for p in present]) for m in PREEMPT_MEASURES}
            for arm in arms
        },
        # paired per seed, with the difference 80% power would detect: a null result says
        # nothing about effects smaller than that (a censored seed: a bound instead)
        "preempt_minus_control": {
            m: _paired_steps(m, [(p["arms"]["preempt"], control(p)) for p in present])
            for m in PREEMPT_MEASURES
        },
        **_oracle_across(present),
    }


def _oracle_across(present: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The oracle minus the control across seeds, and the predictor's share of it: the mean
    paired difference over the mean oracle difference (a ratio of means: a per-seed ratio
    explodes where one seed's oracle bought almost nothing).

    The share is only defined where the oracle's own change is shown: with its interval
    across seeds containing 0, the denominator is noise and any ratio (9.2 on a real sweep)
    reads as a finding; it is then None, and ``share_undefined`` says why."""
    if not all("oracle_minus_control" in p for p in present):
        return {}
    pairs = [(p["arms"]["preempt-oracle"], p["arms"]["preempt-random"]) for p in present]
    oracle = {m: _paired_steps(m, pairs) for m in PREEMPT_MEASURES}
    bought = interval([p["preempt_minus_control"]["recovery_auc"] for p in present])["mean"]
    bound = oracle["recovery_auc"]
    shown = bound["ci_low"] is not None and (bound["ci_low"] > 0 or bound["ci_high"] < 0)
    result: dict[str, Any] = {"oracle_minus_control": oracle}
    if bought is not None and shown:
        result["share_of_oracle_auc"] = bought / bound["mean"]
    else:
        result["share_of_oracle_auc"] = None
        result["share_undefined"] = (
            "the oracle's recovery-AUC change over random survivors is not distinguishable "
            "from 0 across seeds (its 95% interval contains 0): hindsight bought nothing "
            "shown, so no share of it is defined"
            if bound["ci_low"] is not None
            else "fewer than two seeds with the oracle arm: no interval to show its change"
        )
    return result


#: the range of each prediction measure, and of its concept-minus-random difference
PREDICTION_BOUNDS = {"auc": (0.0, 1.0), "precision_at_k": (0.0, 1.0), "precision_lift": (-1.0, 1.0)}
#: the margin a predictor's concept-minus-null difference must be shown inside to be "none"
PREDICTION_MARGIN = 0.05


def prediction_across_seeds(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% interval across seeds of each predictor's AUC, precision at k and precision
    lift (precision minus the base rate), per ground truth, for the concept arm and for its
    paired control (``arm`` random: nothing concept-specific removed there, so its numbers are
    each predictor's null), and of their per-seed difference (``arm`` "concept - random", with
    an equivalence test and the difference 80% power would detect). ``n_seeds`` counts the runs
    where the measure is defined, ``missing`` the others (a ground truth with no positive
    neuron). Runs without predictions are left out."""
    per_arm: dict[str, dict[int, pd.DataFrame]] = {}
    for run in runs:
        frame = pd.DataFrame(run.get("prediction", []))
        if frame.empty:
            continue
        if "arm" not in frame:
            frame["arm"] = "concept"
        # None (no number in the summary's JSON) back to NaN: a measure not defined.
        frame = frame.astype({"auc": float, "precision_at_k": float, "base_rate": float})
        frame["precision_lift"] = frame["precision_at_k"] - frame["base_rate"]
        for arm, rows in frame.groupby("arm", sort=False):
            per_arm.setdefault(str(arm), {})[run["seed"]] = rows.set_index(["predictor", "truth"])
    if "concept" not in per_arm:
        return []
    result = []
    concept = per_arm["concept"]
    keys = list(dict.fromkeys(k for frame in concept.values() for k in frame.index))
    for predictor, truth in keys:
        for measure, bounds in PREDICTION_BOUNDS.items():
            for arm, seeds in per_arm.items():
                values = [_cell(seeds.get(s), predictor, truth, measure) for s in concept]
                result.append(
                    _prediction_row(arm, predictor, truth, measure, interval(values, bounds=bounds))
                )
            if "random" in per_arm:
                control = per_arm["random"]
                values = [
                    _minus(
                        _cell(concept[s], predictor, truth, measure),
                        _cell(control.get(s), predictor, truth, measure),
                    )
                    for s in concept
                ]
                difference = paired(values, PREDICTION_MARGIN, _difference_bounds(bounds))
                result.append(
                    _prediction_row("concept - random", predictor, truth, measure, difference)
                )
    return result


#: the margin within which a set's damage beyond the random floor counts as none
CAUSAL_MARGIN = 0.05


def causal_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per arm with a causal truth (:mod:`neuroplastic.analysis.causal`), across seeds: the damage
    of each candidate set (concept F1 lost, or loss gained) and, paired within each seed, the
    damage beyond the random floor (the set minus ``matched_random``, the same count per
    layer), with an equivalence test and the difference 80% power would detect. A set ``k``
    neurons wide that costs no more than random survivors did not pick what the model uses."""
    result: dict[str, Any] = {}
    arms = dict.fromkeys(arm for run in runs for arm in run.get("causal") or {})
    for arm in arms:
        per_seed = [(run.get("causal") or {}).get(arm) for run in runs]
        present = [c for c in per_seed if c]
        names = list(dict.fromkeys(n for c in present for n in c["lost"]))

        def lost(record: dict | None, name: str) -> float:
            value = (record or {}).get("lost", {}).get(name)
            return math.nan if value is None else float(value)

        result[arm] = {
            "task": present[0]["task"],
            "k": [c["k"] if c else None for c in per_seed],
            "score": interval([c["score"] if c else math.nan for c in per_seed]),
            "lost": {name: interval([lost(c, name) for c in per_seed]) for name in names},
            # the other types' F1 lost (unweighted mean over them), where the run recorded it
            "others_lost": {
                name: interval([_others_lost(c, name) for c in per_seed]) for name in names
            },
            "beyond_random": {
                name: paired(
                    [_minus(lost(c, name), lost(c, "matched_random")) for c in per_seed],
                    CAUSAL_MARGIN,
                )
                for name in names
                if name != "matched_random"
            },
            # The concept's loss beyond the other types' (paired within each seed): a set the
            # concept has moved into costs it more than the others; a set every type shares
            # (general-purpose neurons) costs the others as much or more.
            "specific": {
                name: paired(
                    [_minus(lost(c, name), _others_lost(c, name)) for c in per_seed],
                    CAUSAL_MARGIN,
                )
                for name in names
            },
        }
    return result


def _others_lost(record: dict | None, name: str) -> float:
    values = list(((record or {}).get("others_lost") or {}).get(name, {}).values())
    return sum(values) / len(values) if values else math.nan


def _cell(frame: pd.DataFrame | None, predictor: str, truth: str, measure: str) -> float:
    if frame is None or (predictor, truth) not in frame.index:
        return math.nan
    value = frame.loc[(predictor, truth), measure]
    return float(value) if value is not None else math.nan


def _prediction_row(
    arm: str, predictor: str, truth: str, measure: str, summary: dict[str, Any]
) -> dict[str, Any]:
    return {
        "arm": arm,
        "predictor": predictor,
        "truth": truth,
        "measure": measure,
        "n_seeds": summary["n"],
        **{k: v for k, v in summary.items() if k not in ("n", "values")},
        "values": summary["values"],
    }
