"""Which settings define a run, and which its fine-tuned base: the tables
:meth:`neuroplastic.config.ExperimentConfig.identity` and
:meth:`~neuroplastic.config.ExperimentConfig.base_identity` read. A run's identity is what its
stage markers hash and what a resumption must match."""

from __future__ import annotations

#: Output options: they may change between a run and its resumption.
NOT_IDENTITY = ("save_checkpoints", "device", "device_map")
#: Settings added after runs were published: left out of the identity at their defaults, so the
#: runs made before them keep their hash (and resume).
LATER_SETTINGS = {
    "dtype": "float32",
    "base_epochs": 0.0,
    "stage_epochs": 0.0,
    "rounds": 1,
    "stop_below": 0.0,
    "preempt": None,
    "preempt_count": 100,
    "eval_grid": "uniform",
    "naive": False,
    "relearn": "same",
    "relearn_sentences": 0,
    "relearn_lr": 0.0,
    "removal": "neurons",
    "removal_layers": "all",
    "group_by_length": 0,
}
#: Settings that act only after base fine-tuning: which neurons are ranked and removed, and how
#: the arms retrain, are evaluated and compared. Runs that differ in these alone fine-tune the
#: very same base weights, so a sweep trains those once (:mod:`neuroplastic.store.shared_base`);
#: everything a base stage writes besides its weights (statistics, ranking, top tokens, its
#: evaluation) is computed again by each run under its own settings.
AFTER_BASE = (
    "method",
    "mode",
    "selection",
    "fraction",
    "count",
    "baseline",
    "stages",
    "stage_steps",
    "stage_epochs",
    "schedule",
    "eval_grid",
    "eval_every",
    "top_k_tokens",
    "rounds",
    "stop_below",
    "preempt",
    "preempt_count",
    "naive",
    "relearn",
    "relearn_sentences",
    "relearn_lr",
    "removal",
    "removal_layers",
)
