"""One fine-tuned base for the runs that differ only after it.

The cells of a sweep that differ in what happens after base fine-tuning (``AFTER_BASE``: the
mode, the ranker, the retraining data or rate, the number of stages...) fine-tune exactly the
same base weights: the same model, data, order, dropout, schedule and number of steps. A run
given a sibling's directory loads that sibling's base weights instead of training them again,
then measures its base stage itself under its own settings (the statistics, ranking, top tokens
and evaluation are cheap next to the training, and depend on settings such as the ranker). The
marker it writes says where the weights came from (``shared_from``).

The sibling is trusted only as far as it can be checked: its config must have this run's base
identity (:meth:`ExperimentConfig.base_identity`), its base stage must be marked done, and the
weights must be exactly the file its manifest recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroplastic import distributed
from neuroplastic.config import NAIVE_ARM, ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.checkpoint import load_weights
from neuroplastic.store.lock import reading
from neuroplastic.store.rundir import RunDir

BASE = "base"


@dataclass(frozen=True)
class SharedBase:
    """A sibling run's fine-tuned base for ``arm``: its weights file and its base marker."""

    source: Path
    weights: Path
    marker: dict[str, Any]

    @property
    def base(self) -> dict[str, Any]:
        """The base record (steps, how it stopped...) with where the weights came from."""
        return {**self.marker.get("base", {}), "shared_from": str(self.source)}

    def load_into(self, module: Any) -> None:
        """The weights into ``module``, verified against the source's manifest again under its
        read lock (the source may have changed since it was found)."""
        with reading(RunDir(self.source)):
            RunDir(self.source).manifest.verify(self.weights)
            load_weights(module, self.weights)

    @property
    def losses(self) -> list[float]:
        """The training losses the base row's ``train_loss`` is the mean of, as one value (the
        per-step losses are not kept in a marker; their mean is all the row records)."""
        loss = self.marker["rows"][-1].get("train_loss")
        return [] if loss is None else [loss]


def find_shared_base(
    candidates: Sequence[str | Path], config: ExperimentConfig, arm: str
) -> SharedBase | None:
    """The first of ``candidates`` (run directories) whose base for ``arm`` this run can load,
    or None: a candidate with other base settings, no finished base, no weights left or a
    file that does not match its manifest is passed over (that base is trained again)."""
    for candidate in candidates:
        found = _checked(RunDir(candidate), config, arm)
        if found is not None:
            return found
    return None


def _checked(run: RunDir, config: ExperimentConfig, arm: str) -> SharedBase | None:
    weights, marker = run.weights_path(arm, BASE), run.marker_path(arm, BASE)
    if not (run.config_path.is_file() and marker.is_file() and weights.is_file()):
        return None
    try:
        with reading(run):  # refused while a run holds the directory: train instead
            theirs = ExperimentConfig.from_run(run.config(), source=str(run.config_path))
            if theirs.base_identity() != config.base_identity():
                return None
            run.manifest.verify(weights)
            record = json.loads(marker.read_text())
            # A base trained by another number of processes has other dropout masks: not this
            # run's base. (The device may differ, as it may between a run and its resumption.)
            if record.get("processes", 1) != distributed.world_size():
                return None
            # A naive base trained with the concept's classes in its softmax was taught to
            # refuse the concept (older runs): not the naive base this version trains.
            if arm == NAIVE_ARM and record.get("base", {}).get("concept_in_softmax") is not False:
                return None
    except (NeuroplasticError, OSError, ValueError):
        return None
    return SharedBase(run.path, weights, record)
