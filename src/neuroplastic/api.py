"""One-call entry points that compose the pipeline's modules (used by the CLI and notebooks)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.models import load_model
from neuroplastic.ranking import Ranking
from neuroplastic.stats import NeuronStats, collect_stats


@dataclass
class RankResult:
    model_name: str
    ranking: Ranking
    stats: NeuronStats
    dataset: ConceptDataset
    rows: list[dict[str, Any]]

    @property
    def n_layers(self) -> int:
        return self.ranking.n_layers

    @property
    def d_mlp(self) -> int:
        return self.ranking.d_mlp

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "concept": self.ranking.concept,
            "method": self.ranking.method,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "neurons": self.rows,
        }


def ranking_rows(ranking: Ranking, stats: NeuronStats, tokenizer: Any) -> list[dict[str, Any]]:
    """Every neuron, most salient first, with its top activating tokens; a neuron that never
    fired has no rank or saliency (None) and comes last. Tied neurons share their average rank."""
    frame = ranking.to_frame()
    vocabulary = _decoder(tokenizer)
    rows = []
    for layer, neuron, saliency, rank in frame[["layer", "neuron", "saliency", "rank"]].itertuples(
        index=False
    ):
        rows.append(
            {
                "layer": int(layer),
                "neuron": int(neuron),
                "saliency": float(saliency) if math.isfinite(saliency) else None,
                "rank": float(rank) if math.isfinite(rank) else None,
                "top_tokens": [vocabulary(int(t)) for t in stats.top_token[layer, neuron]],
            }
        )
    return rows


def _decoder(tokenizer: Any):
    cache: dict[int, str] = {}

    def decode(token: int) -> str:
        if token not in cache:
            cache[token] = tokenizer.decode([token]).strip()
        return cache[token]

    return decode


def rank_neurons(
    model: str | Any = "embedded",
    dataset: str = "embedded",
    concept: str = "LOC",
    method: str = "probeless",
    split: str = "validation",
    limit: int | None = None,
    batch_size: int = 32,
    top_k_tokens: int = 10,
    device: str = "cpu",
    progress: bool = True,
) -> RankResult:
    """Load a model and corpus, stream neuron statistics, rank neurons for ``concept``."""
    model_name = model if isinstance(model, str) else type(model).__name__
    loaded = load_model(model, device=device) if isinstance(model, str) else model
    corpus = load_corpus(dataset)
    encoded = encode_split(corpus, loaded.tokenizer, split, limit=limit)
    encoded.label_id(concept)  # unknown labels fail here, before the slow pass
    stats = collect_stats(
        loaded, encoded, batch_size=batch_size, top_k=top_k_tokens, progress=progress
    )
    ranking = Ranking.from_stats(stats, concept, method)
    return RankResult(
        model_name, ranking, stats, encoded, ranking_rows(ranking, stats, loaded.tokenizer)
    )
