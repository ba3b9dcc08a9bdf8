"""Every predictor's scores for one arm (:class:`Predictions`): kept together, saved, loaded and
laid out as a table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from neuroplastic.analysis.predictors import Scores
from neuroplastic.config import PREDICTOR_NAMES
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes

__all__ = ["PREDICTORS", "Predictions"]

#: every predictor, in reading order (the order of the evaluation tables); named in the config
#: module, which the command line reads without torch
PREDICTORS = PREDICTOR_NAMES


@dataclass
class Predictions:
    """Every predictor's ``[layer, neuron]`` scores for one arm (NaN: not a candidate)."""

    scores: dict[str, Scores]

    def __post_init__(self) -> None:
        if not self.scores:
            raise NeuroplasticError("no predictor scores")
        shapes = {tuple(s.shape) for s in self.scores.values()}
        if len(shapes) > 1:
            raise NeuroplasticError(f"predictor scores of different shapes: {sorted(shapes)}")

    def merged(self, other: Predictions) -> Predictions:
        return Predictions({**self.scores, **other.scores})

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        tensors = {name: scores.contiguous() for name, scores in self.scores.items()}
        atomic_write_bytes(path, save(tensors))

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise NeuroplasticError(f"predictions file not found: {path}")
        try:
            loaded = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types for a bad file
            raise NeuroplasticError(
                f"{path}: not a readable predictions file ({error}); rerun `neuroplastic run` "
                "on its run directory, which recomputes it while the run's weights are kept"
            ) from error
        ordered = [p for p in PREDICTORS if p in loaded] + sorted(set(loaded) - set(PREDICTORS))
        return cls({name: loaded[name] for name in ordered})

    def to_frame(self) -> pd.DataFrame:
        """One row per neuron: layer, neuron and a column per predictor."""
        first = next(iter(self.scores.values()))
        layer, neuron = torch.meshgrid(
            torch.arange(first.shape[0]), torch.arange(first.shape[1]), indexing="ij"
        )
        columns = {"layer": layer.flatten().numpy(), "neuron": neuron.flatten().numpy()}
        columns |= {name: s.flatten().numpy() for name, s in self.scores.items()}
        return pd.DataFrame(columns)
