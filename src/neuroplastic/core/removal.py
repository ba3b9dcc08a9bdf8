"""What a run holds while it retrains: a *removal* of the concept.

Every removal a run can hold answers the same few questions, so that the pipeline, the chase and
the pre-emption treat them alike:

* :meth:`Removal.start` -- change the weights once, when the removal begins from the base
  weights (weight pruning; nothing for a removal made of hooks alone);
* :meth:`Removal.hold` -- attach the hooks that stay applied through training and every
  evaluation (permanent hooks, so that ``model.reset_hooks()`` cannot drop them), removed on
  exit; None where nothing is held;
* :attr:`Removal.dead` -- the neurons known to be silent while it is held (evaluations check
  them), or None;
* :meth:`Removal.describe` -- one line for logs and the report.

How a removal is fitted at base and how its paired random control is drawn depend on what it
removes (a ranking's top neurons; an eraser fitted on probe activations), so they are the
removal kind's own functions; so are save and load, which each kind does in its own file format
(``neurons/{arm}.json`` for a neuron set, ``removals/{arm}.safetensors`` for an erasure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from jaxtyping import Bool
from torch import Tensor

from neuroplastic.core.ablation import Ablation, prune_weights
from neuroplastic.core.erasure import LinearErasure, erase
from neuroplastic.core.held_hooks import HeldHooks
from neuroplastic.core.neurons import NeuronSet

NeuronMode = Literal["hold", "regrow"]


class Removal(Protocol):
    """A removal of the concept, held on a model through retraining (see the module)."""

    def start(self, model: Any) -> None: ...

    def hold(self, model: Any) -> HeldHooks | None: ...

    @property
    def dead(self) -> Bool[Tensor, "layer neuron"] | None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class NeuronRemoval:
    """MLP neurons removed in one of two ways: ``hold``, zero-ablation hooks on
    ``blocks.{l}.mlp.hook_post`` held throughout (the paper's experiment: the neurons stay
    silent and get no gradient); ``regrow``, their input weights zeroed once and nothing held,
    so that training may revive them."""

    neurons: NeuronSet
    mode: NeuronMode = "hold"

    def start(self, model: Any) -> None:
        if self.mode == "regrow":
            # Input side only: zeroing both sides puts a neuron on a stationary point, where
            # it can never regrow (see prune_weights).
            prune_weights(model, self.neurons, zero_output=False)

    def hold(self, model: Any) -> Ablation | None:
        return Ablation(model, self.neurons, permanent=True) if self.mode == "hold" else None

    @property
    def dead(self) -> Bool[Tensor, "layer neuron"] | None:
        return self.neurons.mask() if self.mode == "hold" else None

    def describe(self) -> str:
        how = "zero-ablated and held" if self.mode == "hold" else "input weights zeroed once"
        return f"{len(self.neurons)} MLP neurons, {how}"


@dataclass(frozen=True)
class ErasureRemoval:
    """A linear erasure of the concept from the residual stream (:mod:`neuroplastic.core.erasure`:
    LEACE, a direction, or a random projection of the same rank as their control), held by
    permanent hooks at ``blocks.{l}.hook_resid_post``. Its tensors are buffers of the hooks,
    never parameters: retraining cannot change them. No neuron is silenced by it."""

    erasure: LinearErasure

    def start(self, model: Any) -> None:
        pass  # hooks alone: no weight changes

    def hold(self, model: Any) -> HeldHooks:
        return erase(model, self.erasure, permanent=True)

    @property
    def dead(self) -> None:
        return None

    def describe(self) -> str:
        return self.erasure.describe()
