"""Named settings files for ``neuroplastic run --preset NAME`` (flags given with it win).

``paper``: the recipe of Lo, Cohen & Barez (2024) on CoNLL-2003 (needs the hub): DistilGPT2,
probeless ranking, half of all MLP neurons held at zero, base fine-tuning for 3 epochs over the
whole training split (all but the 1,000 probe sentences the rankings are taken on), then 4
retraining stages of 2 epochs each, each with a fresh AdamW (lr 2e-5, weight decay 0.01,
batch 8, linear decay, no warm-up), evaluated on the 3,250 validation sentences after every
stage. The control holds as many random neurons in total (at 50% some layers have too few
neurons left for a per-layer match).

``smollm2``: the offline decoder SmolLM2-135M-Instruct (Q4_1 weights de-quantised) under
``--task lm`` on the embedded corpus, about 12 minutes a run on two CPU cores: the top 0.5%
of its 46,080 MLP neurons by ``selectivity``, ranked at the positions that predict a place name
(where its loss is computed), held at zero beside as many random neurons per layer; base
fine-tuning to a plateau (at most 60 steps of 8 sentences), then 3 retraining stages of 10
steps, evaluated on 120 validation sentences. ``--task ner`` puts a linear head on it instead.

``neuroplastic facts --preset NAME`` takes presets of its own, ``facts-NAME.json``: the flags
that reproduce a published table, placed before the flags given with them (the last of a
repeated flag wins). ``unlearning``: the removal comparison on SmolLM2 (gradient difference,
RMU and neurons under every protocol, 5 seeds; see the file's ``about``).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from neuroplastic.errors import NeuroplasticError

PRESETS = ("paper", "smollm2")
FACTS_PRESETS = ("unlearning",)


def load_preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` as a dict (ExperimentConfig fields)."""
    if name not in PRESETS:
        raise NeuroplasticError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def facts_preset_flags(name: str) -> list[str]:
    """The command-line flags of facts preset ``name``."""
    if name not in FACTS_PRESETS:
        raise NeuroplasticError(
            f"unknown facts preset {name!r}; choose one of {', '.join(FACTS_PRESETS)}"
        )
    text = resources.files(__package__).joinpath(f"facts-{name}.json").read_text(encoding="utf-8")
    return list(json.loads(text)["flags"])
