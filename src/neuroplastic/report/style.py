"""One colour per arm, the same in the run report and the sweep report."""

ARM_COLORS = {
    "concept": "#d62728",
    "random": "#1f77b4",
    "preempt": "#9467bd",
    "preempt-random": "#7f7f7f",
    "preempt-oracle": "#2ca02c",
    "naive": "#ff7f0e",
}
