"""Where a concept is linearly readable: a logistic-regression probe per layer.

A run takes these probes at every stage's end, at two points per layer (:data:`POINTS`): the
residual stream after the block (``blocks.{l}.hook_resid_post``) and what the block's MLP writes
to it (``blocks.{l}.hook_mlp_out``). Their activations can be read off a forward the stage runs
anyway (the evaluation on the validation sentences) by holding a :class:`ResidualTap` on it,
instead of passes of their own: :func:`probe_auc` runs its own passes, :func:`probe_auc_of`
and :func:`probe_readings_of` take what taps kept.

**Readability without its sign.** A probe's raw AUC carries a sign: below 0.5 the probe's
training tokens and its test tokens separate the concept in opposite directions, which is still
readable. :func:`probe_readings_of` gives the raw AUC, the sign-free readability
``max(AUC, 1 - AUC)`` and a 95% interval of the raw AUC (:func:`auc_interval`, clustered by
sentence); "at chance" is said only where that interval holds 0.5.

**A probe held fixed.** A probe fitted anew at every stage asks whether the concept is still
linearly readable anywhere in a layer; after a neuron removal it sits at its ceiling on MiniLM,
at both points, so it cannot trace a thing. The base stage's probe, kept
(:func:`readings_and_probes`, :class:`Probe`) and scored unchanged at later stages
(:func:`fixed_readings_of`), asks whether the concept is still where the base model wrote it:
that reading can move, as the facts study's fitted lens held at base does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.stats import rankdata
from torch import Tensor

from neuroplastic.core.models import resid_hook_name, run_forward
from neuroplastic.data.concept import (
    IGNORE_CONCEPT,
    Batch,
    ConceptDataset,
    predicting_labels,
)
from neuroplastic.errors import NeuroplasticError
from neuroplastic.run_format import FIXED_SUFFIX

#: the most residual-stream bytes :func:`probe_auc` holds at once (layers go in groups below it)
PROBE_MEMORY = 2 * 1024**3

#: where a probe reads, per layer: the residual stream after the block, and the block's MLP
#: output (what its neurons write; on MiniLM a probe fitted anew sits at its ceiling there too
#: after a neuron removal, as the layer's other neurons still write the concept)
POINTS = {
    "resid_post": resid_hook_name,
    "mlp_out": lambda layer: f"blocks.{layer}.hook_mlp_out",
}


@dataclass(frozen=True)
class Residuals:
    """Each layer's activation at one point (the residual stream, or the MLP output) at a
    dataset's real tokens (not padding or special tokens), sentence by sentence in corpus order,
    those tokens' concept-label ids and (where known) the sentence each token is from."""

    layers: dict[int, Float[Tensor, "tokens d_model"]]
    labels: Int[Tensor, " tokens"]
    sentences: Int[Tensor, " tokens"] | None = None


class ResidualTap:
    """Keeps each layer's activation at each of ``points`` (:data:`POINTS`; the residual stream
    by default) at the real tokens of every batch the model runs while its :attr:`hooks` are
    held; call :meth:`record` after each batch's forward. The forward must reach
    :attr:`last_hook`. Whatever order the batches come in, and however they are padded,
    :meth:`residuals` gives the tokens in corpus order: the same rows one pass over the dataset
    in corpus order gives (to a float's last bits, as padding may move them)."""

    def __init__(
        self,
        layers: Sequence[int],
        n_sentences: int,
        points: Sequence[str] = ("resid_post",),
        predicting: bool = False,
    ) -> None:
        if not layers:
            raise NeuroplasticError("a residual tap needs at least one layer")
        unknown = [p for p in points if p not in POINTS]
        if unknown or not points:
            raise NeuroplasticError(f"a tap reads at {', '.join(POINTS)}; got {list(points)}")
        self.layer_list = sorted(set(layers))
        self.points = tuple(dict.fromkeys(points))
        self.n_sentences = n_sentences
        # Label each token by the next one, as ConceptDataset.predicting does (--task lm).
        self.predicting = predicting
        self._batch: dict[tuple[str, int], Tensor] = {}
        self._sentences: dict[int, tuple[list[Tensor], Tensor]] = {}

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(point, layer) for point in self.points for layer in self.layer_list]

    @property
    def hooks(self) -> list[tuple[str, Any]]:
        return [(POINTS[point](layer), self._capture(point, layer)) for point, layer in self.keys]

    def _capture(self, point: str, layer: int):
        def capture(activation: Tensor, hook: Any) -> None:
            self._batch[(point, layer)] = activation.detach()

        return capture

    @property
    def last_hook(self) -> str:
        """The last point the forward must reach (a block's MLP output comes before the
        residual stream after it)."""
        return resid_hook_name(self.layer_list[-1])

    def record(self, batch: Batch) -> None:
        """Keep the batch's real tokens from the activations its forward left in the hooks."""
        missing = [key for key in self.keys if key not in self._batch]
        if missing:
            point, layer = missing[0]
            raise NeuroplasticError(
                f"the forward never reached {POINTS[point](layer)}: run it to the tap's last "
                f"hook point, {self.last_hook}"
            )
        labels = (
            predicting_labels(batch.concept_labels) if self.predicting else batch.concept_labels
        )
        real = labels != IGNORE_CONCEPT
        kept = [self._batch[key].float().cpu() for key in self.keys]
        for row, index in enumerate(batch.sentence_index.tolist()):
            if index in self._sentences:
                raise NeuroplasticError(f"sentence {index} went through the residual tap twice")
            mask = real[row]
            self._sentences[index] = (
                [activation[row][mask] for activation in kept],
                labels[row][mask],
            )
        self._batch.clear()

    def residuals(
        self, point: str = "resid_post", sentences: Sequence[int] | None = None
    ) -> Residuals:
        """What the tap kept at ``point``, in corpus order: of every sentence, or of
        ``sentences`` only; every sentence must have gone through it once."""
        if point not in self.points:
            raise NeuroplasticError(f"the tap kept {', '.join(self.points)}, not {point}")
        if len(self._sentences) != self.n_sentences:
            raise NeuroplasticError(
                f"the residual tap saw {len(self._sentences)} of {self.n_sentences} sentences: "
                "run every sentence through the model with its hooks held (one process, not a "
                "share of them)"
            )
        order = sorted(self._sentences if sentences is None else set(sentences))
        keys = self.keys
        layers = {
            layer: torch.cat([self._sentences[i][0][keys.index((point, layer))] for i in order])
            for layer in self.layer_list
        }
        labels = [self._sentences[i][1] for i in order]
        owner = torch.cat(
            [torch.full((len(y),), i, dtype=torch.long) for i, y in zip(order, labels, strict=True)]
        )
        return Residuals(layers, torch.cat(labels), owner)


def tapped_residuals(
    model: Any,
    data: ConceptDataset,
    layers: Sequence[int],
    batch_size: int = 32,
    points: Sequence[str] = ("resid_post",),
) -> Residuals | dict[str, Residuals]:
    """One pass of its own over ``data`` in corpus order, stopping at the last layer's point:
    the residual stream, or with ``points`` given as more than one, each point's."""
    tap = ResidualTap(layers, len(data), points)
    with torch.no_grad(), model.hooks(fwd_hooks=tap.hooks):
        for batch in data.batches(batch_size):
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=tap.last_hook)
            tap.record(batch)
    if len(tap.points) == 1:
        return tap.residuals(tap.points[0])
    return {point: tap.residuals(point) for point in tap.points}


def layers_that_fit(model: Any, datasets: Sequence[ConceptDataset], points: int = 1) -> int:
    """How many layers' activations at ``points`` points each over ``datasets`` fit in
    :data:`PROBE_MEMORY` as float32 (every token counted, special ones included); at least
    one."""
    tokens = sum(len(e.token_ids) for data in datasets for e in data.encoded)
    return max(1, PROBE_MEMORY // max(1, points * tokens * int(model.cfg.d_model) * 4))


def probe_auc(
    model: Any,
    train: ConceptDataset,
    test: ConceptDataset,
    concept: str,
    layers: Sequence[int],
    batch_size: int = 32,
    steps: int = 200,
) -> dict[int, float]:
    """Per layer, the ROC AUC on ``test``'s real tokens of a logistic-regression probe for the
    concept (its tokens against the rest) trained on ``train``'s residual stream (see
    :func:`probe_auc_of`), from passes of its own. Whatever hooks the model holds (an erasure,
    an ablation) apply. It draws no random numbers and leaves the model's mode as it is (call
    ``model.eval()`` first, or dropout applies to what the probe reads)."""
    concept_id = train.label_id(concept)
    # Layers in groups whose residual streams fit in PROBE_MEMORY: one pass per group (one in
    # all for the default model: 6 layers of 384 over ~13k tokens are 120 MB).
    size = layers_that_fit(model, (train, test))
    layers = list(layers)
    result: dict[int, float] = {}
    for start in range(0, len(layers), size):
        group = layers[start : start + size]
        result |= probe_auc_of(
            tapped_residuals(model, train, group, batch_size),
            tapped_residuals(model, test, group, batch_size),
            concept_id,
            steps,
            concept,
        )
    return result


def probe_readings(
    model: Any,
    train: ConceptDataset,
    test: ConceptDataset,
    concept: str,
    layers: Sequence[int],
    points: Sequence[str] = tuple(POINTS),
    batch_size: int = 32,
    steps: int = 200,
) -> dict[str, dict[int, dict[str, float]]]:
    """Per point (:data:`POINTS`) and layer, :func:`probe_readings_of` from passes of its own
    (layers in groups that fit in :data:`PROBE_MEMORY`), as :func:`probe_auc` takes them."""
    return readings_and_probes(model, train, test, concept, layers, points, batch_size, steps)[0]


def readings_and_probes(
    model: Any,
    train: ConceptDataset,
    test: ConceptDataset,
    concept: str,
    layers: Sequence[int],
    points: Sequence[str] = tuple(POINTS),
    batch_size: int = 32,
    steps: int = 200,
    fixed: Mapping[str, Mapping[int, Probe]] | None = None,
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, dict[int, Probe]]]:
    """:func:`probe_readings` and the probes that gave them (:func:`readings_and_probes_of`);
    with ``fixed`` (probes per point, fitted earlier), those probes' readings on ``test`` too,
    under the point's name with :data:`~neuroplastic.run_format.FIXED_SUFFIX` appended
    (:func:`point_readings`)."""
    concept_id = train.label_id(concept)
    points = tuple(dict.fromkeys(points))
    size = layers_that_fit(model, (train, test), len(points))
    layers = list(layers)
    readings: dict[str, dict[int, dict[str, float]]] = {}
    probes: dict[str, dict[int, Probe]] = {}
    for start in range(0, len(layers), size):
        group = layers[start : start + size]
        fitted = _by_point(tapped_residuals(model, train, group, batch_size, points), points)
        scored = _by_point(tapped_residuals(model, test, group, batch_size, points), points)
        got, kept = point_readings(fitted, scored, concept_id, fixed, steps, concept)
        for point, per_layer in got.items():
            readings.setdefault(point, {}).update(per_layer)
        for point, per_layer in kept.items():
            probes.setdefault(point, {}).update(per_layer)
    return readings, probes


def point_readings(
    fitted: Mapping[str, Residuals],
    scored: Mapping[str, Residuals],
    concept_id: int,
    fixed: Mapping[str, Mapping[int, Probe]] | None = None,
    steps: int = 200,
    concept: str = "",
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, dict[int, Probe]]]:
    """Per point of ``fitted``: a probe per layer fitted there and read on ``scored``
    (:func:`readings_and_probes_of`), and, per point of ``fixed``, the probes held fixed read
    on ``scored`` (:func:`fixed_readings_of`) under ``point + FIXED_SUFFIX``; then the probes
    fitted."""
    readings: dict[str, dict[int, dict[str, float]]] = {}
    probes: dict[str, dict[int, Probe]] = {}
    for point in fitted:
        readings[point], probes[point] = readings_and_probes_of(
            fitted[point], scored[point], concept_id, steps, concept
        )
    for point, held in (fixed or {}).items():
        if point in scored:  # (probes kept at a point this reading does not take are skipped)
            readings[point + FIXED_SUFFIX] = fixed_readings_of(
                dict(held), scored[point], concept_id, concept
            )
    return readings, probes


def _by_point(kept: Residuals | dict[str, Residuals], points: Sequence[str]):
    return kept if isinstance(kept, dict) else {points[0]: kept}


def probe_auc_of(
    train: Residuals, test: Residuals, concept_id: int, steps: int = 200, concept: str = ""
) -> dict[int, float]:
    """Per layer of ``train``, the ROC AUC on ``test``'s tokens of a logistic-regression probe
    for the concept's tokens against the rest, trained on ``train``'s (standardised with
    ``train``'s mean and spread; L-BFGS from zero weights, a small L2 penalty). 0.5: not
    linearly readable."""
    y_train, y_test = train.labels == concept_id, test.labels == concept_id
    if y_train.all() or not y_train.any() or y_test.all() or not y_test.any():
        raise NeuroplasticError(
            f"a probe needs {concept or 'concept'} tokens and others in both splits"
        )
    return {
        layer: _auc(_fit_probe(x, y_train, steps), test.layers[layer], y_test)
        for layer, x in train.layers.items()
    }


def probe_readings_of(
    train: Residuals, test: Residuals, concept_id: int, steps: int = 200, concept: str = ""
) -> dict[int, dict[str, float]]:
    """Per layer, :func:`probe_auc_of`'s probe read four ways: ``auc`` (raw, with its sign),
    ``sign_free`` (``max(auc, 1 - auc)``: readable either way round) and ``low`` / ``high``, the
    95% interval of the raw AUC (:func:`auc_interval`, clustered by ``test``'s sentences where
    known). The concept is at chance at a layer only where ``low <= 0.5 <= high``."""
    return readings_and_probes_of(train, test, concept_id, steps, concept)[0]


def readings_and_probes_of(
    train: Residuals, test: Residuals, concept_id: int, steps: int = 200, concept: str = ""
) -> tuple[dict[int, dict[str, float]], dict[int, Probe]]:
    """:func:`probe_readings_of`'s readings and, per layer, the probe that gave them, folded to
    be held fixed (:class:`Probe`, :func:`fixed_readings_of`): one fit per layer for both."""
    y_train, y_test = train.labels == concept_id, test.labels == concept_id
    if y_train.all() or not y_train.any() or y_test.all() or not y_test.any():
        raise NeuroplasticError(
            f"a probe needs {concept or 'concept'} tokens and others in both splits"
        )
    readings, probes = {}, {}
    for layer, x in train.layers.items():
        fitted = _fit_probe(x, y_train, steps)
        scores = _scores(fitted, test.layers[layer])
        readings[layer] = reading_of(scores, y_test, test.sentences)
        weight, _, std = fitted
        probes[layer] = Probe(weight / std.double())
    return readings, probes


@dataclass(frozen=True)
class Probe:
    """A fitted probe folded into one direction: a token's score is ``x @ direction``, the
    standardisation by the fitting tokens' mean and spread folded in (the offset is dropped: an
    AUC reads ranks only). Kept as plain floats so that a stage's marker can hold it."""

    direction: Float[Tensor, " d_model"]

    def to_list(self) -> list[float]:
        return self.direction.tolist()

    @classmethod
    def from_list(cls, values: Sequence[float]) -> Probe:
        return cls(torch.tensor(values, dtype=torch.float64))


def fixed_readings_of(
    probes: dict[int, Probe], test: Residuals, concept_id: int, concept: str = ""
) -> dict[int, dict[str, float]]:
    """Per layer of ``probes`` that ``test`` has, the probe scored as it is on ``test``'s
    tokens: the readings :func:`probe_readings_of` gives (raw AUC, sign-free, interval), with no
    fitting. A fixed probe reads how much of the concept is left where it was when the probe
    was fitted; a drop means the concept left that direction, not that it left the layer."""
    y_test = test.labels == concept_id
    if y_test.all() or not y_test.any():
        raise NeuroplasticError(f"a probe needs {concept or 'concept'} tokens and others")
    readings = {}
    for layer, probe in probes.items():
        if layer not in test.layers:
            continue
        x = test.layers[layer]
        if x.shape[-1] != probe.direction.shape[0]:
            raise NeuroplasticError(
                f"a probe held fixed at layer {layer} reads {probe.direction.shape[0]} "
                f"dimensions, the activations have {x.shape[-1]}: it was fitted on another model"
            )
        readings[layer] = reading_of((x.double() @ probe.direction).numpy(), y_test, test.sentences)
    return readings


def reading_of(
    scores: np.ndarray, positive: Tensor, clusters: Tensor | None = None
) -> dict[str, float]:
    """A reading of ``scores`` for ``positive``: the raw AUC (``auc``, with its sign), the
    sign-free readability ``max(auc, 1 - auc)`` and the raw AUC's 95% interval ``low`` /
    ``high`` (:func:`auc_interval`, clustered by ``clusters``)."""
    auc, low, high = auc_interval(scores, positive, clusters)
    return {"auc": auc, "sign_free": max(auc, 1 - auc), "low": low, "high": high}


def at_chance(reading: dict[str, float]) -> bool:
    """Whether a reading's interval (:func:`probe_readings_of`) holds 0.5."""
    return reading["low"] <= 0.5 <= reading["high"]


def auc_interval(
    scores: np.ndarray, positive: Tensor, clusters: Tensor | None = None, z: float = 1.959964
) -> tuple[float, float, float]:
    """The ROC AUC of ``scores`` for ``positive`` and its 95% interval, kept in [0, 1].

    The variance is DeLong's from the placement values, summed per cluster (Obuchowski 1997,
    "Nonparametric analysis of clustered ROC curve data"): tokens of one sentence are not
    independent, so the sentence, not the token, is the unit sampled. ``clusters`` gives each
    token's sentence (None: each token its own, plain DeLong)."""
    positive = positive.numpy().astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores)
    auc = float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    # placement values: a positive's share of negatives below it, a negative's share of
    # positives above it (ties count a half)
    v10 = (ranks[positive] - rankdata(scores[positive])) / n_neg
    v01 = 1 - (ranks[~positive] - rankdata(scores[~positive])) / n_pos
    owner = (
        np.arange(len(scores))
        if clusters is None
        else np.unique(clusters.numpy(), return_inverse=True)[1]
    )
    k = int(owner.max()) + 1
    if k < 2:
        return auc, 0.0, 1.0
    sum10 = np.bincount(owner[positive], weights=v10, minlength=k)
    sum01 = np.bincount(owner[~positive], weights=v01, minlength=k)
    m = np.bincount(owner[positive], minlength=k)
    n = np.bincount(owner[~positive], minlength=k)
    d10, d01 = sum10 - m * auc, sum01 - n * auc
    scale = k / (k - 1)
    variance = scale * (
        (d10 @ d10) / n_pos**2 + (d01 @ d01) / n_neg**2 + 2 * (d10 @ d01) / (n_pos * n_neg)
    )
    half = z * float(np.sqrt(max(variance, 0.0)))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def _fit_probe(x: Tensor, y: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mean) / std).double()
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    offset = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, offset], max_iter=steps, line_search_fn="strong_wolfe")
    target = y.double()

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + offset, target)
        value = value + 1e-3 * weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach(), mean, std


def _scores(probe: tuple[Tensor, Tensor, Tensor], x: Tensor) -> np.ndarray:
    weight, mean, std = probe
    return (((x - mean) / std).double() @ weight).numpy()


def _auc(probe: tuple[Tensor, Tensor, Tensor], x: Tensor, y: Tensor) -> float:
    scores = _scores(probe, x)
    ranks = rankdata(scores)  # ties share their mean rank: AUC 0.5 for a constant score
    positive = y.numpy()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


__all__ = [
    "POINTS",
    "Probe",
    "reading_of",
    "readings_and_probes",
    "readings_and_probes_of",
    "fixed_readings_of",
    "PROBE_MEMORY",
    "at_chance",
    "auc_interval",
    "point_readings",
    "probe_readings",
    "probe_readings_of",
    "ResidualTap",
    "Residuals",
    "probe_auc",
    "probe_auc_of",
    "layers_that_fit",
    "tapped_residuals",
]
