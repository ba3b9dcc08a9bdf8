"""One-call entry points that compose the pipeline's modules (used by the CLI and notebooks)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from neuroplastic.config import RANK_METHOD, check_concept
from neuroplastic.core.models import load_model
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import NeuronStats, collect_stats
from neuroplastic.data.concept import IGNORE_TAG, ConceptDataset
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.errors import NeuroplasticError

if TYPE_CHECKING:
    from neuroplastic.report.views import RankingTable


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

    def table(self, n: int = 20) -> RankingTable:
        """The ``n`` most salient neurons with their top tokens, as a notebook table."""
        from neuroplastic.report.views import ranking_table

        return ranking_table(
            self.ranking,
            self.stats,
            self.dataset.tokenizer,
            n,
            title=f"{self.model_name}: top {n} neurons for {self.ranking.concept} "
            f"({self.ranking.method})",
        )

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

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
    method: str = RANK_METHOD,
    split: str = "validation",
    limit: int | None = None,
    batch_size: int = 32,
    top_k_tokens: int = 10,
    device: str = "cpu",
    progress: bool = True,
) -> RankResult:
    """Load a model and corpus, stream neuron statistics, rank neurons for ``concept``."""
    check_concept(concept)  # before the model loads
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


def tag_sentence(tagger: Any, dataset: ConceptDataset, index: int) -> pd.DataFrame:
    """One sentence's words with their true tag and the tag ``tagger`` (a
    :class:`~neuroplastic.core.training.TokenClassifier`) predicts from each word's first subtoken,
    under whatever hooks the model holds (run it inside ``with ablate(...)`` to see the
    ablated model). Words cut off by ``max_length`` are left out."""
    if not 0 <= index < len(dataset):
        raise NeuroplasticError(
            f"sentence {index} is out of range: the dataset has {len(dataset)} sentences"
        )
    batch = dataset.collate([index])
    tagger.eval()
    with torch.no_grad():
        predicted = tagger(batch.tokens, batch.attention_mask).argmax(-1)[0].cpu()
    first = batch.tag_labels[0] != IGNORE_TAG
    words = batch.word_ids[0][first].tolist()
    sentence = dataset.sentences[index]
    return pd.DataFrame(
        {
            "word": [sentence.words[w] for w in words],
            "tag": [sentence.tags[w] for w in words],
            "predicted": [dataset.tag_names[int(t)] for t in predicted[first]],
        }
    )


def count_hooks(model: Any, *, ablations_only: bool = False) -> int:
    """Forward hooks held on the model's hook points right now. Some bridges (BERT) carry
    permanent hooks TransformerLens wires itself; ``ablations_only`` counts neuroplastic's
    ablation hooks alone (one per layer an active ablation touches, 0 once all are removed)."""
    from neuroplastic.core.ablation import _AblationHook

    # A bridge lists some hook points under two names (aliases): count each point once.
    points = {id(point): point for point in model.hook_dict.values()}.values()
    handles = [handle for point in points for handle in point.fwd_hooks]
    if ablations_only:
        handles = [h for h in handles if isinstance(getattr(h, "user_hook", None), _AblationHook)]
    return len(handles)
