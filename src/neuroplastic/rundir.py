"""The layout of a run directory, and the one place that reads and writes its artifacts.

```
DIR/
  config.json                      the ExperimentConfig used (a rerun must match it)
  summary.json                     {"config", "arms": {arm: {"neurons", "stages": [...]}}}
  metrics.jsonl                    one evaluation per line: {"arm", "stage", "step", "f1", ...}
  neurons/{arm}.json               the ablated NeuronSet of each arm
  sentences.json                   token strings of the sentences the statistics were taken on
  token_embeddings.safetensors     "token_ids" [n] and "embeddings" [n, d_model]: the base
                                   model's input embeddings of every token in those sentences
  stages/{arm}/{stage}/ranking.parquet   layer, neuron, score, saliency, rank, layer_rank
                                         (NaN for dead neurons: they are not ranked)
  stages/{arm}/{stage}/stats.safetensors NeuronStats (counts, sums, top-k buffers)
  stages/{arm}/{stage}/top_tokens.parquet layer, neuron, k, value, sentence, position,
                                          token_id, token, label (the dataset-wide top-k)
  checkpoints/{arm}/{stage}.safetensors  model and head weights (with --save-checkpoints)
  state/                           resume state (internal)
  manifest.json                    size and sha256 of every stage, state and checkpoint file
  .lock                            held (flock) by the run writing the directory; its PID
  report.html
```
Stages are named ``base``, ``pruned``, ``retrain-1`` ... ``retrain-S``. Arms are ``concept``
and ``random``. Stage artifacts are read only as the manifest recorded them
(:mod:`neuroplastic.manifest`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes, atomic_write_json
from neuroplastic.manifest import Manifest
from neuroplastic.neurons import NeuronSet
from neuroplastic.ranking import Ranking
from neuroplastic.stats import NeuronStats

ARMS = ("concept", "random")
#: The files of one stage; ``ranking.parquet`` is written last.
STAGE_FILES = ("stats.safetensors", "top_tokens.parquet", "ranking.parquet")


def stage_names(n_stages: int) -> list[str]:
    return ["base", "pruned", *(f"retrain-{i}" for i in range(1, n_stages + 1))]


@dataclass
class StageArtifacts:
    """What one evaluated stage leaves behind, loaded back."""

    arm: str
    stage: str
    ranking: Ranking
    stats: NeuronStats
    top_tokens: pd.DataFrame


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- paths --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.path)

    def stage_dir(self, arm: str, stage: str) -> Path:
        return self.path / "stages" / arm / stage

    def neurons_path(self, arm: str) -> Path:
        return self.path / "neurons" / f"{arm}.json"

    def checkpoint_path(self, arm: str, stage: str) -> Path:
        return self.path / "checkpoints" / arm / f"{stage}.safetensors"

    # -- reading ------------------------------------------------------------------------------
    def require(self) -> None:
        if not self.summary_path.is_file():
            raise NeuroplasticError(
                f"{self.path} is not a finished neuroplastic run (no summary.json); run "
                f"`neuroplastic run --out {self.path}` first"
            )

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    def summary(self) -> dict[str, Any]:
        self.require()
        return json.loads(self.summary_path.read_text())

    def metrics(self) -> pd.DataFrame:
        """One row per evaluation, with f1 columns flattened to ``f1_overall``, ``f1_LOC``..."""
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]
        return pd.json_normalize(rows, sep="_")

    def neurons(self, arm: str) -> NeuronSet:
        return NeuronSet.load(self.neurons_path(arm))

    def arms(self) -> list[str]:
        return [arm for arm in ARMS if self.neurons_path(arm).is_file()]

    def stages(self, arm: str) -> list[str]:
        """Stages of ``arm`` whose artifacts are all there (and recorded in the manifest: a
        stage cut short by a kill is not listed), in pipeline order."""
        order = {name: i for i, name in enumerate(stage_names(1000))}
        root = self.path / "stages" / arm
        entries = self.manifest.entries()
        found = [
            p.name
            for p in (root.iterdir() if root.is_dir() else [])
            if all((p / name).is_file() for name in STAGE_FILES)
            and (entries is None or self.manifest.relative(p / "ranking.parquet") in entries)
        ]
        return sorted(found, key=lambda name: order.get(name, len(order)))

    def stage(self, arm: str, stage: str) -> StageArtifacts:
        """A stage's artifacts, each verified against the run's manifest first."""
        directory = self.stage_dir(arm, stage)
        entries = self.manifest.entries()
        listed = entries is not None and self.manifest.lists(directory / "ranking.parquet")
        if not listed and not (directory / "ranking.parquet").is_file():
            raise NeuroplasticError(f"{directory}: no artifacts for stage {stage!r} of arm {arm!r}")
        if entries is not None:  # a listed file deleted, changed or unlisted is refused
            for name in STAGE_FILES:
                self.manifest.verify(directory / name, entries)
        config = self.config()
        ranking = Ranking.from_frame(
            pd.read_parquet(directory / "ranking.parquet"), config["concept"], config["method"]
        )
        return StageArtifacts(
            arm,
            stage,
            ranking,
            NeuronStats.load(directory / "stats.safetensors"),
            pd.read_parquet(directory / "top_tokens.parquet"),
        )

    def sentences(self) -> list[list[str]]:
        return json.loads((self.path / "sentences.json").read_text())

    def token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_ids [n], embeddings [n, d_model])`` of the base model."""
        from safetensors.torch import load_file

        tensors = load_file(str(self.path / "token_embeddings.safetensors"))
        return tensors["token_ids"], tensors["embeddings"]

    # -- writing ------------------------------------------------------------------------------
    def write_stage(
        self, arm: str, stage: str, ranking: Ranking, stats: NeuronStats, top_tokens: pd.DataFrame
    ) -> list[Path]:
        """Write the stage's artifacts; returns their paths (``STAGE_FILES``)."""
        directory = self.stage_dir(arm, stage)
        stats.save(directory / "stats.safetensors")
        atomic_write_bytes(directory / "top_tokens.parquet", _parquet(top_tokens))
        # Written last: its presence marks the stage's artifacts complete.
        atomic_write_bytes(directory / "ranking.parquet", _parquet(ranking.to_frame()))
        return [directory / name for name in STAGE_FILES]

    def write_sentences(self, tokens: list[list[str]]) -> None:
        atomic_write_json(self.path / "sentences.json", tokens)

    def write_token_embeddings(self, token_ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        from safetensors.torch import save

        atomic_write_bytes(
            self.path / "token_embeddings.safetensors",
            save({"token_ids": token_ids.contiguous(), "embeddings": embeddings.contiguous()}),
        )


def top_tokens_frame(stats: NeuronStats, tokenizer: Any) -> pd.DataFrame:
    """The dataset-wide top-k of every neuron as a long table (readable without the model)."""
    n_layers, d_mlp, k = stats.top_values.shape
    layer, neuron, rank = torch.meshgrid(
        torch.arange(n_layers), torch.arange(d_mlp), torch.arange(k), indexing="ij"
    )
    token_ids = stats.top_token.flatten()
    vocabulary = {t: tokenizer.decode([t]) for t in token_ids.unique().tolist()}
    return pd.DataFrame(
        {
            "layer": layer.flatten().numpy(),
            "neuron": neuron.flatten().numpy(),
            "k": rank.flatten().numpy(),
            "value": stats.top_values.flatten().numpy(),
            "sentence": stats.top_sentence.flatten().numpy(),
            "position": stats.top_position.flatten().numpy(),
            "token_id": token_ids.numpy(),
            "token": [vocabulary[t] for t in token_ids.tolist()],
            "label": [stats.label_names[i] for i in stats.top_label.flatten().tolist()],
        }
    )


def _parquet(frame: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
