"""What "recovered" means and where retraining looks for it: the recovery target and the dense
evaluation grid. Here, without torch, so that text stating them (the reports, the sweep
command's lines) needs none. :mod:`neuroplastic.core.curves` measures recovery against the
target; :meth:`neuroplastic.config.ExperimentConfig.inner_evaluations` places the grid."""

from __future__ import annotations

#: "recovered": the concept's F1 back to this share of its F1 before the removal (for a language
#: model, this share of the concept loss's rise at the removal recovered).
RECOVERY_TARGET = 0.9


def dense_grid(stage_steps: int, every_step: int = 4, log_points: int = 7) -> list[int]:
    """Where a stage of ``stage_steps`` steps is evaluated when recovery is measured densely:
    each of the first ``every_step`` steps, then ``log_points`` log-spaced steps from there to
    the stage's end (30 steps: 1, 2, 3, 4, 6, 8, 11, 15, 21, 30), so that steps-to-recover and
    the recovery AUC do not depend on a coarse grid where the curve rises fastest."""
    first = list(range(1, min(every_step, stage_steps) + 1))
    if stage_steps <= every_step:
        return first
    ratio = (stage_steps / every_step) ** (1 / (log_points - 1))
    spaced = {round(every_step * ratio**i) for i in range(log_points)}
    return sorted(set(first) | spaced | {stage_steps})
