"""Remove neurons: zero- or mean-ablation hooks on ``blocks.{l}.mlp.hook_post``, or weight pruning.

Hooks multiply by a 0/1 mask (``act * keep``), so an ablated neuron has exactly zero activation
and exactly zero gradient into its input weights, through any number of optimizer steps.
Weight pruning zeroes the neuron's weights once and adds no hook: training may regrow it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.core.held_hooks import HeldHooks
from neuroplastic.core.models import FLAT_AT_ZERO, activation_name, check_mlp_hooks, mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError

Mode = Literal["zero", "mean"]


class Ablation(HeldHooks):
    """Ablation hooks held on a model until ``remove()`` (or the end of a ``with`` block).

    ``permanent=True`` registers the hooks so that ``model.reset_hooks()`` keeps them: use it
    when the removal must survive other code's hook bookkeeping, as in retraining.
    """

    def __init__(
        self,
        model: Any,
        neurons: NeuronSet,
        mode: Mode = "zero",
        stats: NeuronStats | None = None,
        permanent: bool = False,
    ) -> None:
        n_layers, d_mlp = check_mlp_hooks(model)
        if not isinstance(neurons, NeuronSet):
            raise NeuroplasticError(
                f"neurons must be a NeuronSet, got a {type(neurons).__name__}: make one with "
                f"NeuronSet.of({n_layers}, {d_mlp}, [(layer, neuron), ...]) or from a Ranking"
            )
        if (neurons.n_layers, neurons.d_mlp) != (n_layers, d_mlp):
            raise NeuroplasticError(
                f"the neuron set is for {neurons.n_layers} layers x {neurons.d_mlp} neurons but "
                f"the model has {n_layers} x {d_mlp}"
            )
        if mode not in ("zero", "mean"):
            raise NeuroplasticError(f"unknown ablation mode {mode!r}; use 'zero' or 'mean'")
        if mode == "mean" and stats is None:
            raise NeuroplasticError("mean-ablation needs NeuronStats for the mean activations")
        super().__init__()
        self.model, self.neurons, self.mode = model, neurons, mode
        keep = ~neurons.mask()
        fill = stats.overall_mean().float() if mode == "mean" else torch.zeros(n_layers, d_mlp)
        try:
            for layer in neurons.by_layer():
                hook_point = model.hook_dict[mlp_hook_name(layer)]
                fn = _AblationHook(
                    keep[layer], fill[layer] * (~keep[layer]) if mode == "mean" else None
                )
                self._hold(hook_point, fn, permanent)
        except BaseException:
            self.remove()
            raise

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"Ablation({len(self.neurons)} neurons, mode={self.mode!r}, {state})"


class _AblationHook:
    """A named callable so ``model`` hook listings say what it is."""

    def __init__(self, keep: Tensor, fill: Tensor | None) -> None:
        self.keep, self.fill = keep, fill  # fill None: zero-ablation, one multiply per pass
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor | None]] = {}

    def __call__(self, activation: Float[Tensor, "... d_mlp"], hook: Any) -> Tensor:
        key = (activation.device, activation.dtype)
        if key not in self._cast:  # one copy per device and dtype, not one per forward pass
            fill = None if self.fill is None else self.fill.to(*key)
            self._cast[key] = (self.keep.to(*key), fill)
        keep, fill = self._cast[key]
        return activation * keep if fill is None else activation * keep + fill

    def __repr__(self) -> str:
        return f"neuroplastic.ablate({int((~self.keep).sum())} neurons)"


def ablate(
    model: Any,
    neurons: NeuronSet,
    mode: Mode = "zero",
    stats: NeuronStats | None = None,
    permanent: bool = False,
) -> Ablation:
    """Ablate ``neurons``: a handle with ``remove()`` that is also a context manager."""
    return Ablation(model, neurons, mode=mode, stats=stats, permanent=permanent)


def prune_weights(model: Any, neurons: NeuronSet, zero_output: bool = True) -> None:
    """Zero each neuron's input weights and bias, and its output weights (no hook).

    With GELU/ReLU-like activations a zero pre-activation gives a zero activation, so a pruned
    neuron is silent. Note: zeroing *both* sides puts the neuron on a stationary point (its input
    gradient is scaled by its output weights, its output gradient by its activation; both zero),
    so training can never revive it. ``zero_output=False`` zeroes the input side only: the neuron
    is just as silent at first but gets gradient and can regrow, which is what ``regrow`` uses.

    Gated (SwiGLU) MLPs, ``down(act(gate·x) * (up·x))``: the input side zeroed is the **up**
    projection's row (``mlp.in``), never the gate's. The neuron's activation ``act(gate·x)·0`` is
    then exactly zero whatever the activation function, and its up row's gradient
    ``δ·act(gate·x)·x`` is not, so it regrows (and the gate row and down column train again once
    the up row has moved). Zeroing the gate row as well would be a stationary point (every one of
    the neuron's gradients is a product with ``up·x`` or ``act(0)`` = 0 for SiLU), like zeroing
    both sides of a plain MLP; zeroing only the down column would leave the neuron firing in
    every statistic. The gate row keeps its trained weights: a regrown gated neuron still opens
    where it used to, which makes regrowing its old meaning easier than in a plain MLP.
    """
    check_mlp_hooks(model)
    with torch.no_grad():
        for layer, indices in neurons.by_layer().items():
            w_in, b_in, w_out = mlp_neuron_weights(model, layer)
            index = torch.tensor(indices, device=w_in.tensor.device)
            w_in.tensor.index_fill_(w_in.neuron_dim, index, 0.0)
            if b_in is not None:
                b_in.index_fill_(0, index, 0.0)
            if zero_output:
                w_out.tensor.index_fill_(w_out.neuron_dim, index, 0.0)


def check_can_regrow(model: Any) -> None:
    """Refuse weight pruning meant to regrow on an activation flat at 0 (ReLU): a neuron with
    zeroed input weights and bias sits at pre-activation 0, where such an activation has zero
    derivative, so no gradient ever reaches its input weights and it stays dead. A gated MLP
    regrows whatever its activation (its up row is zeroed, its gate left: see
    :func:`prune_weights`)."""
    name = activation_name(model)
    if getattr(model.cfg, "gated_mlp", False):
        return  # the up row is zeroed, not the gate's: its gradient is δ·act(gate·x)·x
    if name in FLAT_AT_ZERO:
        raise NeuroplasticError(
            f"regrow mode cannot revive neurons of a {name} MLP: its derivative at 0 is 0, so a "
            "neuron with zeroed input weights gets no gradient and never regrows. Use --mode "
            "hold (ablation hooks), or a model with a smooth activation (GELU, SiLU)"
        )


class _NeuronWeight:
    """A weight tensor and which of its dimensions indexes MLP neurons."""

    def __init__(self, tensor: Tensor, neuron_dim: int) -> None:
        self.tensor, self.neuron_dim = tensor, neuron_dim


def mlp_neuron_weights(
    model: Any, layer: int
) -> tuple[_NeuronWeight, Tensor | None, _NeuronWeight]:
    """Input weight, input bias and output weight of layer ``layer``'s MLP neurons.

    Handles TransformerBridge MLPs (``mlp.in`` / ``mlp.out`` wrapping ``nn.Linear`` or GPT-2's
    ``Conv1D``) and HookedTransformer-style ``W_in`` / ``b_in`` / ``W_out`` parameters. In a
    gated MLP the input weight is the up projection (``mlp.in``, Hugging Face's ``up_proj``;
    ``W_in``), not the gate (``mlp.gate`` / ``W_gate``).
    """
    mlp = model.blocks[layer].mlp
    d_mlp = model.cfg.d_mlp
    if hasattr(mlp, "W_in") and isinstance(mlp.W_in, torch.nn.Parameter):
        return _NeuronWeight(mlp.W_in.data, 1), mlp.b_in.data, _NeuronWeight(mlp.W_out.data, 0)
    try:
        linear_in = _unwrap(getattr(mlp, "in"))
        linear_out = _unwrap(mlp.out)
    except AttributeError as error:
        raise NeuroplasticError(
            f"cannot find the MLP weights of layer {layer} ({type(mlp).__name__}); weight "
            "pruning supports TransformerBridge and HookedTransformer-style MLPs. Use hook "
            "ablation (mode 'hold') instead"
        ) from error
    w_in, w_out = linear_in.weight.data, linear_out.weight.data
    # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
    conv = type(linear_in).__name__ == "Conv1D"
    in_dim = 1 if conv else 0
    out_dim = 0 if conv else 1
    if w_in.shape[in_dim] != d_mlp or w_out.shape[out_dim] != d_mlp:
        raise NeuroplasticError(
            f"layer {layer}: MLP weight shapes {tuple(w_in.shape)} / {tuple(w_out.shape)} do not "
            f"match d_mlp={d_mlp}"
        )
    bias = linear_in.bias.data if linear_in.bias is not None else None
    return _NeuronWeight(w_in, in_dim), bias, _NeuronWeight(w_out, out_dim)


def _unwrap(module: Any) -> Any:
    return getattr(module, "_original_component", module)
