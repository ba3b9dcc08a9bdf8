"""Linear removals of a concept from the residual stream, held by hooks: LEACE and a direction.

Zero-ablating neurons is one way to remove a concept; erasing it linearly from the residual
stream is another. Both removals here have one form, per chosen layer ``l`` at the hook point
``blocks.{l}.hook_resid_post``:

    x  ->  x - ((x - b) @ R.T) @ L.T        (L: d_model x k, R: k x d_model, b: d_model)

* ``leace``: LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed
  form"), fitted with the ``concept-erasure`` package's streaming ``LeaceFitter`` on the probe
  sentences' real tokens. The concept variable is binary, the concept's tokens against every
  other token: the aim is that no linear probe can tell the concept's tokens from the rest (the
  question this tool asks), not that the other entity types become unreadable too. After it, the
  two classes have the same mean (zero cross-covariance), so no linear classifier beats the
  constant predictor on the fitted distribution (the paper's guarantee). ``k`` is 1.
* ``direction``: the difference of the concept's and the other tokens' mean residual, unit
  length, projected out (``x - (x . d) d``; ``L = d``, ``R = d``, ``b = 0``), as
  refusal-direction work removes a direction.
* :func:`fit_matched_control`: the control, a random orthogonal projection of the same rank at
  the same points (``L = R.T = Q``, orthonormal columns, ``b = 0``) that removes the same share
  of each layer's variance as the concept's eraser (see its docstring for why and how).
  :meth:`LinearErasure.random_control` is the unmatched one (uniform random directions), which
  removes about ``rank / d_model`` of the variance whatever the eraser removes.

**Removed share of variance.** For a removal ``x -> x - D(x)``, the share of a layer's variance
it removes is the variance of what it takes away over the layer's total variance,
``tr Cov(D(x)) / tr Cov(x) = tr(L R S R^T L^T) / tr S`` with ``S`` the covariance of the
residual stream it sees (the earlier layers' removals held). For an orthogonal projection this
is the share of variance along the projected-out directions; LEACE, an oblique projection, is
the affine eraser with the least ``E|D(x)|^2`` (its optimality), so it never removes more than
the largest principal direction does. Fitting records it per layer (:attr:`removed`).

The tensors are plain buffers of the hook, not parameters: training never changes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.core.held_hooks import HeldHooks
from neuroplastic.core.models import capture_into, model_device, resid_hook_name, run_forward
from neuroplastic.data.concept import IGNORE_CONCEPT, ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.extras import require
from neuroplastic.progress import progress as progress_bar

Kind = Literal["leace", "direction", "random"]
#: The one metadata key of a saved erasure's file: its kind, concept and removed variance.
METADATA_KEY = "erasure"


@dataclass
class LinearErasure:
    """A removal at some layers' residual stream (see the module's docstring for the form)."""

    kind: Kind
    concept: str
    #: per layer: L (d_model x k), R (k x d_model) and b (d_model)
    left: dict[int, Float[Tensor, "d_model k"]]
    right: dict[int, Float[Tensor, "k d_model"]]
    bias: dict[int, Float[Tensor, " d_model"]]
    #: per layer, the share of the residual stream's variance it removes on the sentences it
    #: was fitted on (:func:`removed_share`; empty for one saved before this was recorded)
    removed: dict[int, float] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.left)

    @property
    def rank(self) -> int:
        """Dimensions removed per layer."""
        return int(next(iter(self.left.values())).shape[1])

    def apply(self, layer: int, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        left, right, bias = (
            t[layer].to(x.device, x.dtype) for t in (self.left, self.right, self.bias)
        )
        return x - ((x - bias) @ right.T) @ left.T

    def describe(self) -> str:
        what = {
            "leace": f"LEACE erasure of {self.concept} (its tokens against all others)",
            "direction": f"the {self.concept} difference-of-means direction projected out",
            "random": "a random orthogonal projection of the same rank (the control)",
        }[self.kind]
        if self.kind == "random" and self.removed:
            what = (
                "a random orthogonal projection of the same rank, removing the same share of "
                "variance (the control)"
            )
        return f"{what} at blocks.{{{','.join(map(str, self.layers))}}}.hook_resid_post"

    def removed_share(self, layer: int, covariance: Float[Tensor, "d_model d_model"]) -> float:
        """The share of the variance of a stream with ``covariance`` this removal takes away at
        ``layer``: ``tr(L R S R^T L^T) / tr S`` (the module's docstring)."""
        left = self.left[layer].double()
        right = self.right[layer].double()
        moved = left @ (right @ covariance.double() @ right.T) @ left.T
        return float(torch.trace(moved) / torch.trace(covariance.double()).clamp_min(1e-30))

    def random_control(self, seed: int) -> LinearErasure:
        """As many uniformly random orthonormal directions per layer projected out, at the same
        points: the unmatched control (it removes about ``rank / d_model`` of the variance);
        runs hold :func:`fit_matched_control` instead."""
        generator = torch.Generator().manual_seed(seed)
        left, right, bias = {}, {}, {}
        for layer in self.layers:
            d_model = self.left[layer].shape[0]
            gaussian = torch.randn(d_model, self.rank, generator=generator, dtype=torch.float64)
            q, _ = torch.linalg.qr(gaussian)
            left[layer], right[layer] = q.float(), q.T.float().contiguous()
            bias[layer] = torch.zeros(d_model)
        return LinearErasure("random", self.concept, left, right, bias)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save

        from neuroplastic.io import atomic_write_bytes

        tensors = {}
        for layer in self.layers:
            # copies: a direction's L and R may be views of one vector
            tensors[f"{layer}.left"] = self.left[layer].clone().contiguous()
            tensors[f"{layer}.right"] = self.right[layer].clone().contiguous()
            tensors[f"{layer}.bias"] = self.bias[layer].clone().contiguous()
        described: dict[str, str] = {"kind": self.kind, "concept": self.concept}
        if self.removed:
            described["removed"] = json.dumps({str(k): v for k, v in sorted(self.removed.items())})
        # One metadata key: safetensors writes its metadata from a hash map, whose order
        # changes between processes, and a file must be the same bytes for the same erasure.
        data = save(tensors, metadata={METADATA_KEY: json.dumps(described, sort_keys=True)})
        return atomic_write_bytes(path, data)  # a run resumes from it: never half-written

    @classmethod
    def load(cls, path: str | Path) -> LinearErasure:
        from safetensors import safe_open

        parts: dict[str, dict[int, Tensor]] = {"left": {}, "right": {}, "bias": {}}
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if METADATA_KEY in metadata:  # files saved before it carry the keys themselves
                metadata = json.loads(metadata[METADATA_KEY])
            if metadata.get("kind") not in ("leace", "direction", "random") or not metadata.get(
                "concept"
            ):
                raise NeuroplasticError(
                    f"{path} is not a saved erasure (its metadata has no kind and concept); "
                    "save one with LinearErasure.save"
                )
            for key in handle.keys():
                layer, _, part = key.partition(".")
                if part not in parts or not layer.isdigit():
                    raise NeuroplasticError(f"{path}: unexpected tensor {key!r} in an erasure")
                # a copy: fresh, aligned storage (the header's length moves the data)
                parts[part][int(layer)] = handle.get_tensor(key).clone()
        removed = {int(k): float(v) for k, v in json.loads(metadata.get("removed", "{}")).items()}
        return cls(
            metadata["kind"],  # type: ignore[arg-type]
            metadata["concept"],
            parts["left"],
            parts["right"],
            parts["bias"],
            removed,
        )


# -- fitting -------------------------------------------------------------------------------------
def residual_tokens(
    model: Any,
    data: ConceptDataset,
    layers: Sequence[int],
    batch_size: int = 32,
    progress: bool = False,
) -> Iterable[tuple[dict[int, Float[Tensor, "tokens d_model"]], Tensor]]:
    """Per batch: each layer's residual stream (``hook_resid_post``) at the real tokens (not
    padding or special tokens), and those tokens' concept-label ids. No gradients."""
    last = max(layers)
    captured: dict[int, Tensor] = {}
    hooks = [(resid_hook_name(layer), capture_into(captured, layer)) for layer in layers]
    device = model_device(model)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in progress_bar(
            data.batches(batch_size),
            desc="residual stream",
            total=-(-len(data) // batch_size),
            enabled=progress,
        ):
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=resid_hook_name(last))
            real = (batch.concept_labels != IGNORE_CONCEPT).to(device)
            yield (
                {layer: captured[layer][real].float().cpu() for layer in layers},
                batch.concept_labels.to(device)[real].cpu(),
            )


def fit_leace(
    model: Any,
    data: ConceptDataset,
    concept: str,
    layers: Sequence[int],
    batch_size: int = 32,
    progress: bool = False,
) -> LinearErasure:
    """A LEACE eraser per layer, fitted on ``data``'s real tokens (concept against the rest);
    put the model in eval mode first, or dropout applies to what it is fitted on.

    Layer by layer, from the first, each fitted with the earlier layers' erasers held: erasing
    at one layer changes what every later layer sees, so an eraser fitted on the unerased model
    would not erase there (on the embedded model, the last layer's classes kept a mean
    difference of 1.3 that way, and a probe's AUC 0.82)."""
    LeaceFitter = require("concept_erasure", "LEACE").LeaceFitter
    concept_id = data.label_id(concept)
    d_model = int(model.cfg.d_model)

    def fit_one(residual: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        fitter = LeaceFitter(d_model, 1, dtype=torch.float64, device="cpu")
        seen = 0
        for x, labels in residual:
            z = (labels == concept_id).double()[:, None]
            seen += int(z.sum())
            fitter.update(x.double(), z)
        if seen == 0:
            raise NeuroplasticError(f"no {concept} tokens in the sentences to fit LEACE on")
        eraser = fitter.eraser
        bias = eraser.bias if eraser.bias is not None else torch.zeros(d_model)
        return eraser.proj_left.float(), eraser.proj_right.float(), bias.float()

    return _fit_in_order("leace", model, data, concept, layers, fit_one, batch_size, progress)


def fit_direction(
    model: Any,
    data: ConceptDataset,
    concept: str,
    layers: Sequence[int],
    batch_size: int = 32,
    progress: bool = False,
) -> LinearErasure:
    """Per layer, the unit difference of the concept tokens' and the other tokens' mean
    residual, to be projected out; layer by layer with the earlier directions held, as
    :func:`fit_leace`."""
    concept_id = data.label_id(concept)

    def fit_one(residual: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        sums = torch.zeros(2, int(model.cfg.d_model), dtype=torch.float64)
        counts = torch.zeros(2, dtype=torch.float64)
        for x, labels in residual:
            is_concept = labels == concept_id
            counts += torch.stack([(~is_concept).sum(), is_concept.sum()]).double()
            sums[0] += x[~is_concept].double().sum(0)
            sums[1] += x[is_concept].double().sum(0)
        if counts.min() == 0:
            raise NeuroplasticError(
                f"the direction needs {concept} tokens and other tokens; got {int(counts[1])} "
                f"and {int(counts[0])}"
            )
        means = sums / counts[:, None]
        direction = ((means[1] - means[0]) / (means[1] - means[0]).norm()).float()
        return direction[:, None].clone(), direction[None, :].clone(), torch.zeros_like(direction)

    return _fit_in_order("direction", model, data, concept, layers, fit_one, batch_size, progress)


def _fit_in_order(
    kind: Kind,
    model: Any,
    data: ConceptDataset,
    concept: str,
    layers: Sequence[int],
    fit_one,
    batch_size: int,
    progress: bool,
) -> LinearErasure:
    """Fit ``layers`` one after another, each on the residual stream with the earlier layers'
    removals held (one pass over ``data`` per layer, stopping at that layer)."""
    if not layers:
        raise NeuroplasticError("no layers to fit an erasure at")
    data.label_id(concept)  # an unknown concept fails before any pass
    erasure = LinearErasure(kind, concept, {}, {}, {})
    for layer in sorted(set(layers)):
        moments = _Moments()
        with erase(model, erasure) if erasure.left else nullcontext():
            residual = (
                (moments.add(per_layer[layer]), labels)
                for per_layer, labels in residual_tokens(model, data, [layer], batch_size, progress)
            )
            left, right, bias = fit_one(residual)
        erasure.left[layer] = left.contiguous()
        erasure.right[layer] = right.contiguous()
        erasure.bias[layer] = bias.contiguous()
        erasure.removed[layer] = erasure.removed_share(layer, moments.covariance())
    return erasure


class _Moments:
    """Streaming mean and covariance of rows (float64)."""

    def __init__(self) -> None:
        self.n, self.total, self.outer = 0, None, None

    def add(self, x: Tensor) -> Tensor:
        """Count ``x``'s rows in; returns ``x`` (so it can sit inside a generator)."""
        rows = x.double()
        if self.total is None:
            self.total = torch.zeros(rows.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
        self.n += rows.shape[0]
        self.total += rows.sum(0)
        self.outer += rows.T @ rows
        return x

    def covariance(self) -> Float[Tensor, "d d"]:
        if self.total is None or self.n < 2:
            raise NeuroplasticError("too few tokens to measure the residual stream's variance")
        mean = self.total / self.n
        return (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)


def matched_directions(
    covariance: Float[Tensor, "d d"],
    gaussian: Float[Tensor, "d k"],
    target: float,
    tolerance: float = 1e-6,
) -> Float[Tensor, "d k"]:
    """Orthonormal directions ``Q`` drawn from ``gaussian`` whose projection removes ``target``
    of the variance of a stream with ``covariance``: ``Q = orth(S^(a/2) G)``, the tilt ``a``
    solved by bisection so that ``tr(Q^T S Q) / tr S`` is ``target`` (within ``tolerance``,
    relative). ``a = 0`` is a uniformly random subspace (the unmatched control); ``a > 0`` leans
    towards the stream's high-variance directions, ``a < 0`` away from them. For one direction
    the share rises monotonically with ``a`` (it is the mean eigenvalue under weights
    ``lambda^a c^2``), from the least eigenvalue's share to the greatest's; a target outside
    that range gets the nearest end."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    eigenvalues = eigenvalues.clamp_min(0)
    total = float(eigenvalues.sum())
    top = float(eigenvalues.max())
    if total <= 0:
        raise NeuroplasticError("the residual stream has no variance to match")
    # log(lambda / lambda_max), floored so a null direction has a finite weight
    logs = torch.log((eigenvalues / top).clamp_min(1e-18))
    coordinates = eigenvectors.T @ gaussian.double()

    def directions(tilt: float) -> Tensor:
        log_weights = 0.5 * tilt * logs
        weights = torch.exp(log_weights - log_weights.max())
        q, _ = torch.linalg.qr(eigenvectors @ (weights[:, None] * coordinates))
        return q

    def share(tilt: float) -> float:
        q = directions(tilt)
        return float(torch.trace(q.T @ covariance.double() @ q)) / total

    low, high = -1.0, 1.0
    while share(low) > target and low > -4096:
        low *= 2
    while share(high) < target and high < 4096:
        high *= 2
    if share(low) >= target:
        return directions(low)
    if share(high) <= target:
        return directions(high)
    for _ in range(200):
        middle = (low + high) / 2
        value = share(middle)
        if abs(value - target) <= tolerance * max(target, 1e-12):
            return directions(middle)
        low, high = (middle, high) if value < target else (low, middle)
    return directions((low + high) / 2)


def fit_matched_control(
    model: Any,
    data: ConceptDataset,
    erasure: LinearErasure,
    seed: int,
    batch_size: int = 32,
    progress: bool = False,
) -> LinearErasure:
    """The control of ``erasure``: per layer, as many random orthonormal directions projected
    out, drawn so that they remove the same share of the layer's variance on ``data`` (the
    sentences ``erasure`` was fitted on) as ``erasure`` does (:func:`matched_directions`).

    Why this control. A uniformly random direction in ``d_model`` dimensions removes about
    ``1 / d_model`` of the variance (0.26% in 384) and so nothing at all: its paired difference
    is just the eraser's own number. A control must remove as much as the treatment and differ
    in what it removes: here the rank, the hook points and the share of variance are the
    eraser's, and only the directions are random (no concept in particular). An eraser fitted
    for another entity type would remove a neighbouring concept instead, which answers another
    question (is the removal specific?), needs a second type in every dataset, and does not
    remove as much by construction.

    Layer by layer, as the eraser was fitted: each layer's variance is measured on the stream
    with the control's earlier layers held, and the shares recorded in :attr:`removed`. The
    Gaussian draws come from ``seed`` alone (a layer's draw does not depend on the data)."""
    if set(erasure.removed) != set(erasure.layers):
        raise NeuroplasticError(
            "the erasure records no share of removed variance (saved by an older release): "
            "fit it again to draw a matched control"
        )
    generator = torch.Generator().manual_seed(seed)
    control = LinearErasure("random", erasure.concept, {}, {}, {})
    for layer in erasure.layers:
        d_model = erasure.left[layer].shape[0]
        gaussian = torch.randn(d_model, erasure.rank, generator=generator, dtype=torch.float64)
        moments = _Moments()
        with erase(model, control) if control.left else nullcontext():
            for per_layer, _ in residual_tokens(model, data, [layer], batch_size, progress):
                moments.add(per_layer[layer])
        covariance = moments.covariance()
        q = matched_directions(covariance, gaussian, erasure.removed[layer])
        control.left[layer] = q.float().contiguous()
        control.right[layer] = q.T.float().contiguous()
        control.bias[layer] = torch.zeros(d_model)
        control.removed[layer] = control.removed_share(layer, covariance)
    if not all(math.isfinite(v) for v in control.removed.values()):
        raise NeuroplasticError("the matched control's removed variance is not finite")
    return control


# -- holding it --------------------------------------------------------------------------------
class Erasing(HeldHooks):
    """The erasure's hooks, held on a model until ``remove()`` (or the end of a ``with``
    block); ``permanent=True`` survives ``model.reset_hooks()``, as retraining needs."""

    def __init__(self, model: Any, erasure: LinearErasure, permanent: bool = False) -> None:
        super().__init__()
        self.model, self.erasure = model, erasure
        try:
            for layer in erasure.layers:
                name = resid_hook_name(layer)
                if name not in model.hook_dict:
                    raise NeuroplasticError(f"the model has no hook point {name}")
                point = model.hook_dict[name]
                self._hold(point, _ErasureHook(erasure, layer), permanent)
        except BaseException:
            self.remove()
            raise


class _ErasureHook:
    def __init__(self, erasure: LinearErasure, layer: int) -> None:
        self.erasure, self.layer = erasure, layer

    def __call__(self, x: Tensor, hook: Any) -> Tensor:
        return self.erasure.apply(self.layer, x)

    def __repr__(self) -> str:
        return f"neuroplastic.erase({self.erasure.kind}, layer {self.layer})"


def erase(model: Any, erasure: LinearErasure, permanent: bool = False) -> Erasing:
    """Hold ``erasure`` on ``model``: a handle with ``remove()`` that is also a context manager."""
    return Erasing(model, erasure, permanent=permanent)


__all__ = [
    "Erasing",
    "LinearErasure",
    "erase",
    "fit_direction",
    "fit_leace",
    "fit_matched_control",
    "matched_directions",
    "residual_tokens",
]
