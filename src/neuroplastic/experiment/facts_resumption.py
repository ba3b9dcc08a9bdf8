"""Whether a seed of a facts study may be resumed: the settings recorded in its ``config.json``
against the ones given, refused before any model loads when they differ in a setting the
study's removal depends on (:func:`check_resumable`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from neuroplastic.errors import NeuroplasticError
from neuroplastic.facts_config import BEFORE_THE_SETTING, WEIGHT_EDITS, FactsConfig
from neuroplastic.io import atomic_write_json


def _changed_settings(directory: Path, config: FactsConfig) -> list[str]:
    """The settings that differ between ``config`` and the run recorded in ``directory`` (none
    when there is none). The protocols and the best case's learning rates and adapters may
    change: their states are their own, so a rerun with more adds states beside the others."""
    path = directory / "config.json"
    if not path.exists():
        return []
    now = config.to_dict()
    # A setting added since the run was made reads as its default, or as what the run did
    # before the setting existed.
    recorded = {**FactsConfig().to_dict(), **BEFORE_THE_SETTING, **json.loads(path.read_text())}
    growable = ("protocols", "best_case_lrs", "best_case_adapters")
    return sorted(
        k
        for k in {*recorded, *now}
        if k not in growable and recorded.get(k) != now.get(k) and uses_setting(config.removal, k)
    )


def uses_setting(removal: str, name: str) -> bool:
    """Whether a study of ``removal`` depends on the setting ``name``: the weight edits'
    settings matter to their own removal only (a neurons run resumes whatever they say)."""
    if name.startswith(("graddiff_", "rmu_")):
        return name.split("_")[0] == removal
    if name == "edit_retain":
        return removal in WEIGHT_EDITS
    return True


def check_resumable(config: FactsConfig, seeds: Sequence[int], root: Path) -> None:
    """Refuse, before any model loads, to resume a seed of ``root`` under other settings."""
    for seed in seeds:
        directory = root / f"seed-{seed}"
        changed = _changed_settings(directory, replace(config, seed=seed))
        if changed:
            raise NeuroplasticError(
                f"{directory} holds a facts run with other settings ({', '.join(changed)}); "
                "rerun with its settings to resume, or give another --out"
            )


def check_and_record_config(directory: Path, config: FactsConfig) -> None:
    """Refuse to resume the seed in ``directory`` under other settings
    (:func:`_changed_settings`), then record these in its ``config.json``."""
    check_resumable(config, [config.seed], directory.parent)
    atomic_write_json(directory / "config.json", config.to_dict())
