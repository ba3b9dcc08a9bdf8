"""Chosen MLP neurons' activations on every token of chosen sentences: what a neuron view
draws, so that a reader sees a neuron's context and not its top token alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.core.models import mlp_hook_name, run_forward
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.progress import progress as progress_bar


def neuron_activations(
    model: Any,
    dataset: ConceptDataset,
    neurons: Sequence[tuple[int, int]],
    sentences: Sequence[int],
    batch_size: int = 16,
    progress: bool = False,
) -> dict[int, Float[np.ndarray, "pos neuron"]]:
    """Per sentence of ``sentences`` (indices into ``dataset``), each of ``neurons``'
    ``blocks.{l}.mlp.hook_post`` activation on every real token (padding dropped; one column
    per neuron, in order). No gradients; whatever hooks the model holds apply."""
    neurons = list(neurons)
    if not neurons or not sentences:
        return {}
    layers = sorted({layer for layer, _ in neurons})
    captured: dict[int, Tensor] = {}

    def capture(layer: int):
        def hook(activation: Tensor, hook: Any) -> None:
            captured[layer] = activation.detach()

        return hook

    out: dict[int, np.ndarray] = {}
    hooks = [(mlp_hook_name(layer), capture(layer)) for layer in layers]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in progress_bar(
            dataset.batches(batch_size, list(sentences)),
            desc="neuron views",
            total=-(-len(sentences) // batch_size),
            enabled=progress,
        ):
            captured.clear()
            run_forward(
                model, batch.tokens, batch.attention_mask, stop_at=mlp_hook_name(layers[-1])
            )
            picked: Float[Tensor, "batch pos neuron"] = torch.stack(
                [captured[layer][:, :, neuron] for layer, neuron in neurons], dim=-1
            )
            for row, sentence in enumerate(batch.sentence_index.tolist()):
                length = int(batch.attention_mask[row].sum())
                out[sentence] = picked[row, :length].float().cpu().numpy()
    return out


__all__ = ["neuron_activations"]
