"""The report pages' shared look: one colour per arm (the same in the run report and the sweep
report), the layer and dead-neuron colours, and how a number that may be missing is shown."""

from __future__ import annotations

import math
from typing import Any

from neuroplastic.config import (
    CONCEPT_ARM,
    NAIVE_ARM,
    PREEMPT_ARM,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RANDOM_ARM,
)

ARM_COLORS = {
    CONCEPT_ARM: "#d62728",
    RANDOM_ARM: "#1f77b4",
    PREEMPT_ARM: "#9467bd",
    PREEMPT_RANDOM_ARM: "#7f7f7f",
    PREEMPT_ORACLE_ARM: "#2ca02c",
    NAIVE_ARM: "#ff7f0e",
}

LAYER_COLORS = (
    "#440154",
    "#3b528b",
    "#21918c",
    "#5ec962",
    "#fde725",
    "#f89540",
    "#cc4778",
    "#7e03a8",
    "#0d0887",
    "#b12a90",
    "#fca636",
    "#2a788e",
)
#: Behind the heatmaps, so dead neurons (NaN saliency, drawn as gaps) show grey: no Viridis
#: colour is grey.
DEAD_COLOR = "#bdbdbd"


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec``, or a dash where it is missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def fmt_or_missing(value: Any, spec: str, missing: str = "–") -> str:
    """A number formatted by ``spec``, or ``missing`` where there is none."""
    return missing if value is None or not math.isfinite(value) else format(value, spec)


def steps_text(value: Any) -> str:
    """Steps to recover: 0 means the score never fell below the target."""
    if value is None:
        return "not reached"
    return "0 (never below)" if value == 0 else f"{value:.1f}"
