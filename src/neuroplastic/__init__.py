"""neuroplastic: does a concept removed from a language model stay removed?

Rank the MLP neurons most salient for a concept, ablate them through TransformerLens hook points,
retrain with the ablation held, and trace where the concept comes back.

The package is built in floors, each importing only the floors below it::

    config, errors, io, extras, progress, distributed   settings and plumbing
    data/         corpora, the concept's labels, the embedded synthetic corpus
    core/         the method on any TransformerLens model (no run directory)
    store/        the run directory: files, manifest, locks, checkpoints, repair
    analysis/     pure functions of loaded results, and intervals across seeds
    experiment/   one run (pipeline), chase, pre-emption, sweeps (serial or Ray)
    report/       HTML pages, neuron views, the run and sweep reports
    api, cli      one-call helpers for notebooks, the ``neuroplastic`` command

The public API below is importable from here; importing the package itself stays light (no
torch until one of these names is first used), and what needs an optional extra (the embedded
model and corpus, the report's plots) raises a ``MissingExtraError`` naming it.
"""

from __future__ import annotations

import importlib
from typing import Any

from neuroplastic.errors import NeuroplasticError
from neuroplastic.extras import MissingExtraError

__version__ = "0.1.0"

#: public name -> the module it lives in (imported on first use)
_PUBLIC = {
    "load_model": "neuroplastic.core.models",
    "collect_stats": "neuroplastic.core.stats",
    "NeuronStats": "neuroplastic.core.stats",
    "Ranking": "neuroplastic.core.ranking",
    "NeuronSet": "neuroplastic.core.neurons",
    "ablate": "neuroplastic.core.ablation",
    "NeuronRemoval": "neuroplastic.core.removal",
    "ErasureRemoval": "neuroplastic.core.removal",
    "LinearErasure": "neuroplastic.core.erasure",
    "fit_leace": "neuroplastic.core.erasure",
    "fit_direction": "neuroplastic.core.erasure",
    "erase": "neuroplastic.core.erasure",
    "probe_auc": "neuroplastic.core.probes",
    "ExperimentConfig": "neuroplastic.config",
    "run_experiment": "neuroplastic.experiment.pipeline",
    "run_sweep": "neuroplastic.experiment.sweep",
    "write_report": "neuroplastic.report.run_report",
    "rank_neurons": "neuroplastic.api",
    "tag_sentence": "neuroplastic.api",
    "count_hooks": "neuroplastic.api",
}

__all__ = ["MissingExtraError", "NeuroplasticError", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'neuroplastic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
