"""Streaming per-neuron statistics of ``blocks.{l}.mlp.hook_post`` over a concept dataset.

One batched pass; per concept label the token count, sum and sum of squares of every neuron, and
the dataset-wide top-k activating tokens of every neuron (sentence, position, token, label). Memory
is fixed by ``n_labels x n_layers x d_mlp`` and the top-k buffers, whatever the dataset size.
Two passes over disjoint halves ``merge`` into exactly one pass over the whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from neuroplastic.data.concept import Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes
from neuroplastic.models import check_mlp_hooks, mlp_hook_name, run_forward


@dataclass
class NeuronStats:
    label_names: tuple[str, ...]
    count: Int[Tensor, " label"]
    sum: Float[Tensor, "label layer neuron"]
    sum_sq: Float[Tensor, "label layer neuron"]
    top_values: Float[Tensor, "layer neuron k"]
    top_sentence: Int[Tensor, "layer neuron k"]
    top_position: Int[Tensor, "layer neuron k"]
    top_token: Int[Tensor, "layer neuron k"]
    top_label: Int[Tensor, "layer neuron k"]

    @classmethod
    def empty(cls, label_names: Sequence[str], n_layers: int, d_mlp: int, k: int) -> NeuronStats:
        n_labels = len(label_names)
        top_shape = (n_layers, d_mlp, 0)
        del k  # buffers grow to k as tokens arrive
        return cls(
            label_names=tuple(label_names),
            count=torch.zeros(n_labels, dtype=torch.long),
            sum=torch.zeros(n_labels, n_layers, d_mlp, dtype=torch.float64),
            sum_sq=torch.zeros(n_labels, n_layers, d_mlp, dtype=torch.float64),
            top_values=torch.empty(top_shape),
            top_sentence=torch.empty(top_shape, dtype=torch.long),
            top_position=torch.empty(top_shape, dtype=torch.long),
            top_token=torch.empty(top_shape, dtype=torch.long),
            top_label=torch.empty(top_shape, dtype=torch.long),
        )

    @property
    def n_layers(self) -> int:
        return self.sum.shape[1]

    @property
    def d_mlp(self) -> int:
        return self.sum.shape[2]

    @property
    def k(self) -> int:
        return self.top_values.shape[2]

    def label_index(self, label: str) -> int:
        if label not in self.label_names:
            raise NeuroplasticError(
                f"unknown concept label {label!r}; labels present: {', '.join(self.label_names)}"
            )
        return self.label_names.index(label)

    def mean(self) -> Float[Tensor, "label layer neuron"]:
        """Mean activation per label (zero for a label with no tokens)."""
        counts = self.count.clamp(min=1).to(torch.float64)
        return self.sum / counts[:, None, None]

    def variance(self) -> Float[Tensor, "label layer neuron"]:
        counts = self.count.clamp(min=1).to(torch.float64)[:, None, None]
        return (self.sum_sq / counts - self.mean() ** 2).clamp(min=0)

    def overall_mean(self) -> Float[Tensor, "layer neuron"]:
        return self.sum.sum(0) / self.count.sum().clamp(min=1)

    def update(
        self,
        activations: Float[Tensor, "layer token neuron"],
        labels: Int[Tensor, " token"],
        sentence: Int[Tensor, " token"],
        position: Int[Tensor, " token"],
        token: Int[Tensor, " token"],
        k: int,
    ) -> None:
        """Fold in the activations of labelled tokens (already stripped of special/pad tokens)."""
        acts = activations.to(torch.float64)
        one_hot = torch.nn.functional.one_hot(labels, len(self.label_names)).to(torch.float64)
        self.count += one_hot.sum(0).long()
        self.sum += einops.einsum(
            one_hot, acts, "token label, layer token neuron -> label layer neuron"
        )
        self.sum_sq += einops.einsum(
            one_hot, acts**2, "token label, layer token neuron -> label layer neuron"
        )
        n_new = min(k, activations.shape[1])
        values, index = activations.float().topk(n_new, dim=1)  # [layer, n_new, neuron]
        index = einops.rearrange(index, "layer k neuron -> layer neuron k")
        self._merge_top(
            einops.rearrange(values, "layer k neuron -> layer neuron k"),
            sentence[index],
            position[index],
            token[index],
            labels[index],
            k,
        )

    def _merge_top(self, values, sentence, position, token, label, k: int) -> None:
        values = torch.cat([self.top_values, values], dim=2)
        kept, index = values.topk(min(k, values.shape[2]), dim=2)
        self.top_values = kept

        def pick(old: Tensor, new: Tensor) -> Tensor:
            return torch.cat([old, new], dim=2).gather(2, index)

        self.top_sentence = pick(self.top_sentence, sentence)
        self.top_position = pick(self.top_position, position)
        self.top_token = pick(self.top_token, token)
        self.top_label = pick(self.top_label, label)

    def merge(self, other: NeuronStats) -> NeuronStats:
        """Statistics of both passes together (the passes must cover disjoint sentences)."""
        if self.label_names != other.label_names or self.sum.shape != other.sum.shape:
            raise NeuroplasticError(
                "cannot merge statistics of different labels or model shapes: "
                f"{self.label_names} {tuple(self.sum.shape)} vs "
                f"{other.label_names} {tuple(other.sum.shape)}"
            )
        k = max(self.k, other.k)
        merged = NeuronStats(
            self.label_names,
            self.count + other.count,
            self.sum + other.sum,
            self.sum_sq + other.sum_sq,
            self.top_values,
            self.top_sentence,
            self.top_position,
            self.top_token,
            self.top_label,
        )
        merged._merge_top(
            other.top_values,
            other.top_sentence,
            other.top_position,
            other.top_token,
            other.top_label,
            k,
        )
        return merged

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        tensors = {
            f.name: getattr(self, f.name).contiguous()
            for f in fields(self)
            if f.name != "label_names"
        }
        atomic_write_bytes(
            path, save(tensors, metadata={"label_names": ",".join(self.label_names)})
        )

    @classmethod
    def load(cls, path: str | Path) -> NeuronStats:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            label_names = tuple(handle.metadata()["label_names"].split(","))
        return cls(label_names=label_names, **load_file(str(path)))


class StatsCollector:
    """Hooks that capture every layer's ``mlp.hook_post`` and fold each batch into NeuronStats.

    Used by ``collect_stats`` and by evaluation, which gathers statistics in its own forward
    passes instead of running the data through the model twice.
    """

    def __init__(self, model: Any, label_names: Sequence[str], top_k: int) -> None:
        self.n_layers, d_mlp = check_mlp_hooks(model)
        self.top_k = top_k
        self.stats = NeuronStats.empty(label_names, self.n_layers, d_mlp, top_k)
        self.captured: dict[int, Tensor] = {}
        self.hooks = [
            (mlp_hook_name(layer), self._capture(layer)) for layer in range(self.n_layers)
        ]

    def _capture(self, layer: int):
        def hook(activation: Tensor, hook: Any) -> None:
            self.captured[layer] = activation.detach()

        return hook

    def consume(self, batch: Batch) -> None:
        """Fold in the activations the hooks captured for ``batch``."""
        keep = batch.concept_labels >= 0
        # Statistics accumulate on the CPU in float64 whatever device the model runs on.
        acts = torch.stack(
            [
                self.captured[layer][keep.to(self.captured[layer].device)].cpu()
                for layer in range(self.n_layers)
            ]
        )
        positions = torch.arange(batch.tokens.shape[1]).expand_as(batch.tokens)
        sentences = batch.sentence_index[:, None].expand_as(batch.tokens)
        self.stats.update(
            acts,
            batch.concept_labels[keep],
            sentences[keep],
            positions[keep],
            batch.tokens[keep],
            self.top_k,
        )
        self.captured.clear()


def collect_stats(
    model: Any,
    dataset: ConceptDataset,
    batch_size: int = 32,
    top_k: int = 20,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> NeuronStats:
    """Stream the dataset (or the sentences ``indices``) through the model with MLP hooks."""
    collector = StatsCollector(model, dataset.label_names, top_k)
    order = list(range(len(dataset))) if indices is None else list(indices)
    n_batches = (len(order) + batch_size - 1) // batch_size
    last_hook = mlp_hook_name(collector.n_layers - 1)
    with torch.no_grad(), model.hooks(fwd_hooks=collector.hooks):
        for batch in tqdm(
            dataset.batches(batch_size, order),
            total=n_batches,
            desc="neuron statistics",
            disable=not progress,
            leave=False,
        ):
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=last_hook)
            collector.consume(batch)
    return collector.stats
