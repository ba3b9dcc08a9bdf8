"""Removals that edit the weights, as unlearning research does: gradient difference and RMU.

The tool's other removals are held by hooks (neurons, LEACE, a direction). These two fine-tune
the weights instead, and are what every unlearning benchmark includes:

- **Gradient difference** (:func:`gradient_difference`): each step ascends the loss on a batch
  of the forget set and descends it on a batch of the retain set,
  ``loss = -L(forget) + retain_weight * L(retain)``, every weight trained (open-unlearning's
  ``GradDiff``, TOFU's baseline).
- **RMU** (:func:`rmu`; Li et al. 2024, the WMDP paper): at one layer, push the residual stream
  of the forget data toward a fixed random direction of norm ``c`` and keep the retain data's
  residual where the unedited model had it,
  ``loss = mean|h(forget) - c*u|^2 + alpha * mean|h(retain) - h_frozen(retain)|^2``, updating
  only the MLPs of a few layers at and before it. The forward pass stops at that layer.

Both run with a constant learning rate under AdamW without weight decay (WMDP's recipe), the
gradient norm clipped at 1, and the model in eval mode (no dropout: the frozen model's
activations and every step are deterministic). The forget and retain batches of step ``n``
depend only on the seed, so a removal and its control (another forget set of the same size)
see the same schedule. Each returns every step's loss terms, for the run's manifest.

:func:`changed_tensors` gives what an edit changed, to store beside the run and load back.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from neuroplastic.core.models import model_device, run_forward
from neuroplastic.core.training import batch_order
from neuroplastic.data.concept import Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError

#: What a step's loss is on one batch (the facts study's: the answer tokens' cross-entropy).
LossFn = Callable[[Any, Batch], Tensor]
#: The retain batches' order is drawn apart from the forget batches'.
RETAIN_SALT = 1_000_003


def _check(name: str, forget: ConceptDataset, retain: ConceptDataset, steps: int) -> None:
    if steps < 1:
        raise NeuroplasticError(f"{name}: steps must be at least 1, got {steps}")
    if not len(forget) or not len(retain):
        raise NeuroplasticError(
            f"{name}: the forget set ({len(forget)} sentences) and the retain set "
            f"({len(retain)}) must both have sentences"
        )


def _batches(
    forget: ConceptDataset, retain: ConceptDataset, steps: int, batch_size: int, seed: int
) -> Iterator[tuple[Batch, Batch]]:
    """Each step's forget and retain batch: seeded reshuffled epochs of each set."""
    forget_order = batch_order(len(forget), steps, batch_size, seed)
    retain_order = batch_order(len(retain), steps, batch_size, seed + RETAIN_SALT)
    for forget_items, retain_items in zip(forget_order, retain_order, strict=True):
        yield forget.collate(forget_items), retain.collate(retain_items)


@contextlib.contextmanager
def _training_only(model: Any, parameters: Sequence[nn.Parameter]) -> Iterator[None]:
    """Only ``parameters`` require gradients inside the block; every flag as before after."""
    before = {id(p): p.requires_grad for p in model.parameters()}
    chosen = {id(p) for p in parameters}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    model.eval()
    try:
        yield
    finally:
        # The edit's last gradients go too: a later training that clips over every parameter
        # would count them.
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(before[id(p)])


def _step(
    optimizer: torch.optim.Optimizer, parameters: Sequence[nn.Parameter], loss: Tensor, name: str
) -> None:
    if not torch.isfinite(loss):
        raise NeuroplasticError(
            f"{name}: the loss became {loss.item()}; lower its learning rate or its steps"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()


def gradient_difference(
    model: Any,
    forget: ConceptDataset,
    retain: ConceptDataset,
    loss_fn: LossFn,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    retain_weight: float = 1.0,
) -> list[dict[str, float]]:
    """Edit every weight of ``model`` in place: ``steps`` AdamW steps on
    ``-loss_fn(forget batch) + retain_weight * loss_fn(retain batch)``. Returns each step's
    ``forget_loss`` and ``retain_loss`` (before that step's update)."""
    _check("gradient difference", forget, retain, steps)
    parameters = list(model.parameters())
    device = model_device(model)
    history = []
    with _training_only(model, parameters):
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
        for forget_batch, retain_batch in _batches(forget, retain, steps, batch_size, seed):
            forget_loss = loss_fn(model, forget_batch.to(device))
            retain_loss = loss_fn(model, retain_batch.to(device))
            _step(
                optimizer,
                parameters,
                -forget_loss + retain_weight * retain_loss,
                "gradient difference",
            )
            history.append({"forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()})
    return history


def steering_direction(d_model: int, seed: int) -> Float[Tensor, " d_model"]:
    """RMU's fixed random direction: uniform on [0, 1) in each coordinate, then unit norm (as
    WMDP's code draws it), from the seed alone."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.rand(d_model, generator=generator)
    return direction / direction.norm()


def token_mse(
    activations: Float[Tensor, "batch pos d_model"],
    target: Float[Tensor, "batch pos d_model"] | Float[Tensor, " d_model"],
    attention_mask: Tensor,
) -> Tensor:
    """The squared error per coordinate, averaged over the real tokens (padding left out)."""
    mask = attention_mask.to(activations.dtype)
    per_token = (activations - target).pow(2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def residual_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def after_first(attention_mask: Tensor) -> Tensor:
    """The real tokens but the first. Under causal attention the first position sees only its
    own token, so in sentences that all begin with the tokenizer's start token its residual is
    one vector for every sentence: it carries no fact, and in Llama-style models it is a
    massive attention sink (about 6x the other tokens' norm in SmolLM2's layer 7, 160x in
    layer 12) that would swamp RMU's means. RMU's losses and scale leave it out."""
    mask = attention_mask.clone()
    mask[:, 0] = 0
    return mask


def mean_residual_norm(model: Any, data: ConceptDataset, layer: int, batch_size: int = 32) -> float:
    """The mean norm of the residual stream after block ``layer`` over the real tokens of
    ``data`` but each sentence's first (:func:`after_first`): the scale RMU's steering is
    stated against."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in data.batches(batch_size, range(len(data))):
            residual = run_forward(
                model, batch.tokens, batch.attention_mask, stop_at=residual_hook(layer)
            )
            mask = after_first(batch.attention_mask).to(residual.device).bool()
            total += float(residual.norm(dim=-1)[mask].sum())
            count += int(mask.sum())
    return total / count


def rmu_parameters(model: Any, layers: Sequence[int]) -> list[nn.Parameter]:
    """Every weight of the MLPs of ``layers``: all RMU updates."""
    n_layers = int(model.cfg.n_layers)
    if not layers or any(not 0 <= layer < n_layers for layer in layers):
        raise NeuroplasticError(
            f"RMU: updated layers {list(layers)} must be some of the model's 0..{n_layers - 1}"
        )
    return [p for layer in layers for p in model.blocks[layer].mlp.parameters()]


@contextlib.contextmanager
def _swapped(parameters: Sequence[nn.Parameter], values: Sequence[Tensor]) -> Iterator[None]:
    """``parameters`` hold ``values`` inside the block (the unedited model), their own after."""
    own = [p.data for p in parameters]
    for p, value in zip(parameters, values, strict=True):
        p.data = value
    try:
        yield
    finally:
        for p, value in zip(parameters, own, strict=True):
            p.data = value


def rmu(
    model: Any,
    forget: ConceptDataset,
    retain: ConceptDataset,
    layer: int,
    updated_layers: Sequence[int],
    steering: float,
    alpha: float,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
) -> list[dict[str, float]]:
    """Edit the MLPs of ``updated_layers`` in place by RMU at ``layer``: the forget batch's
    residual is pushed toward ``steering`` times :func:`steering_direction`, the retain batch's
    held where the unedited weights put it, every real token but the first
    (:func:`after_first`) averaged. Returns each step's ``forget_loss`` and
    ``retain_loss`` (before its update, ``retain_loss`` unweighted)."""
    _check("RMU", forget, retain, steps)
    if max(updated_layers, default=-1) > layer:
        raise NeuroplasticError(
            f"RMU: the updated layers {list(updated_layers)} must be at or before the steered "
            f"layer {layer}: what comes after it cannot move its residual"
        )
    if not (math.isfinite(steering) and steering > 0 and alpha >= 0):
        raise NeuroplasticError("RMU: steering must be positive and alpha 0 or more")
    parameters = rmu_parameters(model, updated_layers)
    unedited = [p.detach().clone() for p in parameters]
    device = model_device(model)
    target = steering * steering_direction(int(model.cfg.d_model), seed).to(device)
    hook = residual_hook(layer)

    def residual(batch: Batch) -> Float[Tensor, "batch pos d_model"]:
        return run_forward(model, batch.tokens, batch.attention_mask, stop_at=hook)

    history = []
    with _training_only(model, parameters):
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
        for forget_batch, retain_batch in _batches(forget, retain, steps, batch_size, seed):
            forget_batch, retain_batch = forget_batch.to(device), retain_batch.to(device)
            with torch.no_grad(), _swapped(parameters, unedited):
                frozen = residual(retain_batch)
            forget_loss = token_mse(
                residual(forget_batch), target, after_first(forget_batch.attention_mask)
            )
            retain_loss = token_mse(
                residual(retain_batch), frozen, after_first(retain_batch.attention_mask)
            )
            _step(optimizer, parameters, forget_loss + alpha * retain_loss, "RMU")
            history.append({"forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()})
    return history


def changed_tensors(model: Any, before: dict[str, Tensor]) -> dict[str, Float[Tensor, "..."]]:
    """The entries of ``model.state_dict()`` that differ from ``before``, as contiguous copies
    (tied weights stored under each of their names: safetensors refuses shared storage)."""
    return {
        name: value.detach().contiguous().clone()
        for name, value in model.state_dict().items()
        if not torch.equal(value, before[name])
    }
