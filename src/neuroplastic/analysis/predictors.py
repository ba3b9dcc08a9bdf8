"""The predictors of :mod:`neuroplastic.analysis.predict`, one ``[layer, neuron]`` score each:
the candidates they score, those read off saved artifacts, and those that run the model."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from neuroplastic.core.ablation import Ablation
from neuroplastic.core.models import check_mlp_hooks, mlp_hook_name, model_device, run_forward
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.core.stats import NeuronStats
from neuroplastic.core.training import TokenClassifier, lm_token_losses
from neuroplastic.data.concept import IGNORE_TAG, Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.progress import progress as progress_bar

__all__ = [
    "coactivation_score",
    "gradient_attribution",
    "random_score",
    "readable_concept_tokens",
    "saliency_score",
    "similarity_score",
    "survivors",
]

Scores = Float[Tensor, "layer neuron"]
Mask = Bool[Tensor, "layer neuron"]


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------


def survivors(alive: Mask, removed: NeuronSet) -> Mask:
    """The candidates: neurons live at a stage (``Ranking.alive``) and not removed.

    A removed neuron cannot take the concept over, and a dead one (never fired) has no saliency
    to gain, so neither is scored.
    """
    if tuple(alive.shape) != (removed.n_layers, removed.d_mlp):
        raise NeuroplasticError(
            f"the removed set is for {removed.n_layers} layers x {removed.d_mlp} neurons but the "
            f"live-neuron mask is {tuple(alive.shape)}"
        )
    return alive.bool() & ~removed.mask()


def _only(scores: Tensor, candidates: Mask) -> Scores:
    """``scores`` as float64 with NaN outside ``candidates``."""
    if scores.shape != candidates.shape:
        raise NeuroplasticError(
            f"scores of shape {tuple(scores.shape)} do not match the candidate mask "
            f"{tuple(candidates.shape)}"
        )
    scores = scores.detach().double().cpu()
    return torch.where(candidates.cpu(), scores, torch.full_like(scores, math.nan))


# ---------------------------------------------------------------------------------------------
# Predictors from saved artifacts
# ---------------------------------------------------------------------------------------------


def saliency_score(ranking: Ranking, candidates: Mask) -> Scores:
    """The candidates' saliency in ``ranking`` (live-only normalized rank, 1 = most salient).
    Used at the pruned stage (``saliency_pruned``) and at base (``saliency_base``)."""
    return _only(ranking.saliency, candidates & ranking.alive)


def similarity_score(
    base_stats: NeuronStats,
    embeddings: TokenEmbeddings,
    concept: str,
    candidates: Mask,
    concept_tokens: Sequence[int] | None = None,
    readable: Bool[Tensor, "layer neuron k"] | None = None,
) -> Scores:
    """Concept similarity (:class:`TokenEmbeddings`, centroid cosine) between each candidate's
    base top-k tokens and the concept's tokens: how close the neuron already was to the concept
    before it was removed elsewhere ("primed", Lo et al. 2024).

    ``readable`` marks the top-token entries the predictor may read (default: all); the run
    passes those from the predict half of the probe sentences (:mod:`neuroplastic.core.halves`).
    ``concept_tokens`` defaults to the distinct concept-labelled tokens among the readable
    top tokens of all neurons, as :func:`neuroplastic.analysis.reappearance.primed_neurons` uses.
    NaN where a neuron's readable top tokens have no embedding.
    """
    if readable is None:
        readable = torch.ones_like(base_stats.top_token, dtype=torch.bool)
    if concept_tokens is None:
        concept_tokens = readable_concept_tokens(base_stats, concept, readable).tolist()
    if len(concept_tokens) == 0:
        raise NeuroplasticError(
            f"no token labelled {concept!r} among the base top tokens: cannot measure similarity "
            "to the concept; collect statistics with more top tokens (--top-k-tokens)"
        )
    n_layers, d_mlp = base_stats.n_layers, base_stats.d_mlp
    similarity = embeddings.similarity_many(
        base_stats.top_token.reshape(n_layers * d_mlp, -1).contiguous(),
        torch.tensor(list(concept_tokens)),
        mask_a=readable.reshape(n_layers * d_mlp, -1),
    ).reshape(n_layers, d_mlp)
    return _only(similarity, candidates)


def readable_concept_tokens(
    stats: NeuronStats, concept: str, readable: Bool[Tensor, "layer neuron k"]
) -> Tensor:
    """:func:`neuroplastic.analysis.arm_run.concept_token_ids` over the ``readable`` entries
    only."""
    z = stats.label_index(concept)
    return stats.top_token[(stats.top_label == z) & readable].unique()


def random_score(candidates: Mask, seed: int) -> Scores:
    """Uniform scores from a generator seeded with ``seed`` alone: the chance floor (AUC 0.5 in
    expectation). float64, so ties practically never occur."""
    generator = torch.Generator().manual_seed(int(seed))
    return _only(
        torch.rand(tuple(candidates.shape), generator=generator, dtype=torch.float64), candidates
    )


# ---------------------------------------------------------------------------------------------
# Predictors that run the model
# ---------------------------------------------------------------------------------------------


def _bare_model(module: Any) -> Any:
    return module.model if isinstance(module, TokenClassifier) else module


def _concept_loss(module: nn.Module, batch: Batch, concept_id: int) -> Tensor:
    """The concept's loss on one batch, *summed* over its targets (not averaged), so that a
    token's gradient does not depend on which other sentences share its batch.

    Tagging (a :class:`TokenClassifier`): cross-entropy of the gold tag on the tokens that carry
    a tag (first subtokens) and belong to the concept. Language modelling (a bare model):
    next-token loss of every concept token.
    """
    concept = batch.concept_labels == concept_id
    if isinstance(module, TokenClassifier):
        logits = module(batch.tokens, batch.attention_mask)
        targets = batch.tag_labels.masked_fill(~concept, IGNORE_TAG)
        return nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_TAG, reduction="sum"
        )
    losses = lm_token_losses(module, batch)  # position t predicts token t + 1
    chosen = concept[:, 1:] & batch.attention_mask[:, 1:].bool()
    return losses[chosen].sum()


def _attribution_positions(module: nn.Module, batch: Batch, concept_id: int) -> Tensor:
    """Where attribution is averaged: the concept tokens; for language modelling, the positions
    that *predict* a concept token (the one before it), where its loss is computed."""
    concept = batch.concept_labels == concept_id
    if isinstance(module, TokenClassifier):
        return concept
    chosen = torch.zeros_like(concept)
    chosen[:, :-1] = concept[:, 1:] & batch.attention_mask[:, 1:].bool()
    return chosen


def gradient_attribution(
    module: nn.Module,
    data: ConceptDataset,
    concept: str,
    removed: NeuronSet,
    candidates: Mask | None = None,
    hold: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> Scores:
    """Mean over the concept tokens of the probe sentences ``data`` of |a x dL/da|, where ``a``
    is a neuron's activation at ``blocks.{l}.mlp.hook_post`` and ``L`` the concept's loss
    (:func:`_concept_loss`), with ``removed`` zero-ablated for the duration when ``hold``.

    Attribute on the model as retraining will run it: ``hold=True`` in ``hold`` mode (the
    ablation cuts every path through the removed neurons, gradients included); ``hold=False``
    in ``regrow`` mode, where the removed neurons' input weights are zeroed and no hook is held
    (their zero activation still passes gradient on through their output weights).

    ``a x dL/da`` is the first-order change of the loss if the neuron were switched off at that
    token, so a high score marks a neuron the concept's loss already runs through once the
    removed neurons are gone: a candidate for where retraining pushes first. The model is in
    eval mode (no dropout) and no parameter's ``.grad`` is touched. ``candidates`` defaults to every
    neuron outside ``removed``.
    """
    model = _bare_model(module)
    n_layers, d_mlp = check_mlp_hooks(model)
    concept_id = data.label_id(concept)
    candidates = ~removed.mask() if candidates is None else candidates
    device = model_device(model)
    total = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    n_tokens = 0
    captured: dict[int, Tensor] = {}
    hooks = [(mlp_hook_name(layer), _keep_into(captured, layer)) for layer in range(n_layers)]
    # The ablation hooks are added first, so the capture hooks see (and the gradient flows
    # through) the ablated activations, as in retraining.
    ablation = Ablation(model, removed) if hold else nullcontext()
    with _eval_mode(module), ablation, model.hooks(fwd_hooks=hooks):
        with torch.enable_grad():
            for batch in _batches(data, batch_size, progress, "gradient attribution"):
                batch = batch.to(device)
                positions = _attribution_positions(module, batch, concept_id)
                if not positions.any():
                    captured.clear()
                    continue
                loss = _concept_loss(module, batch, concept_id)
                layers = sorted(captured)
                if len(layers) != n_layers or not loss.requires_grad:
                    raise NeuroplasticError(
                        "gradient attribution needs the MLP activations to carry gradients: "
                        "the model's parameters are frozen (requires_grad=False) or its forward "
                        "pass skips MLP hook points"
                    )
                grads = torch.autograd.grad(loss, [captured[layer] for layer in layers])
                for layer, grad in zip(layers, grads, strict=True):
                    # float32 at least (a bfloat16 model's product would round to 3 digits), on
                    # the layer's own device (a model may be spread over several).
                    act = captured[layer].detach()
                    product = act.float() * grad.float()
                    product = product[positions.to(act.device)]  # [tokens, d_mlp]
                    total[layer] += product.abs().sum(0).double().cpu()
                n_tokens += int(positions.sum())
                captured.clear()
    if n_tokens == 0:
        raise NeuroplasticError(
            f"the probe sentences have no {concept!r} tokens to attribute the concept's loss on"
        )
    return _only(total / n_tokens, candidates)


def coactivation_score(
    module: nn.Module,
    data: ConceptDataset,
    concept: str,
    removed: NeuronSet,
    candidates: Mask | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> Scores:
    """How closely a neuron moves with the removed neurons on the concept's tokens, at base.

    Over the concept tokens ``T`` of ``data`` (base model: no ablation), each removed neuron
    ``j`` is standardized, ``z_j(t) = (a_j(t) - mean_T a_j) / sd_T a_j``, so every removed
    neuron weighs the same whatever its scale; their mean ``s(t) = mean_j z_j(t)`` is the
    removed neurons' joint signal. A neuron's score is ``|Pearson r|`` over ``T`` between its
    activation and ``s``: high when it rises and falls with the removed neurons from one concept
    token to the next (or against them: the same information), i.e. when it already carries
    what they carried. Removed neurons constant on ``T`` are left out of ``s``; a candidate
    constant on ``T`` scores 0 (it co-varies with nothing).

    Two passes over ``data``: means and spreads first, then the correlation.
    """
    model = _bare_model(module)
    n_layers, d_mlp = check_mlp_hooks(model)
    concept_id = data.label_id(concept)
    candidates = ~removed.mask() if candidates is None else candidates
    removed_mask = removed.mask()
    if not removed_mask.any():
        raise NeuroplasticError("co-activation needs at least one removed neuron")

    def passes() -> Iterator[Float[Tensor, "token layer neuron"]]:
        return _concept_activations(module, data, concept_id, batch_size, progress)

    first = _Moments.of(passes())
    if first.n < 2:
        raise NeuroplasticError(
            f"co-activation needs at least 2 {concept!r} tokens in the probe sentences; "
            f"got {first.n}"
        )
    used = removed_mask & first.varies
    if not used.any():
        raise NeuroplasticError(
            "the removed neurons never vary on the concept's tokens (are they ablated?): "
            "co-activation is measured on the base model, before any ablation hook is attached"
        )
    mean, spread = first.mean, first.variance.sqrt()
    # The second pass takes every moment afresh (activations shifted by the first pass's mean,
    # for precision), so r is exact whatever the first pass's numbers were.
    neurons, signal, cross = _Moments(), _Moments(), torch.zeros(n_layers, d_mlp).double()
    for acts in passes():
        centered = acts - mean
        joint = (centered[:, used] / spread[used]).mean(-1)  # s(t), [token]
        neurons.add(centered)
        signal.add(joint)
        cross += einops.einsum(joint, centered, "token, token layer neuron -> layer neuron")
    if not signal.varies.item():
        raise NeuroplasticError(
            "the removed neurons' standardized mean is constant on the concept's tokens (they "
            "cancel out): co-activation with them is undefined"
        )
    covariance = cross / neurons.n - neurons.mean * signal.mean
    correlation = covariance / (neurons.variance * signal.variance).sqrt().clamp(min=1e-300)
    score = torch.where(neurons.varies, correlation.abs().clamp(max=1.0), 0.0)
    return _only(score, candidates)


class _Moments:
    """Running count, mean and variance (population) of float64 values along the first axis."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0

    @classmethod
    def of(cls, batches: Iterator[Tensor]) -> _Moments:
        moments = cls()
        for values in batches:
            moments.add(values)
        return moments

    def add(self, values: Tensor) -> None:
        self.n += values.shape[0]
        self.total = self.total + values.sum(0)
        self.squares = self.squares + values.pow(2).sum(0)

    @property
    def mean(self) -> Tensor:
        return torch.as_tensor(self.total / max(self.n, 1), dtype=torch.float64)

    @property
    def variance(self) -> Tensor:
        return (torch.as_tensor(self.squares / max(self.n, 1)) - self.mean**2).clamp(min=0)

    @property
    def varies(self) -> Tensor:
        """Whether the values vary: a tiny floor relative to their size keeps the round-off of a
        constant from passing for variation."""
        return self.variance > 1e-12 * (self.mean**2 + 1)


def _concept_activations(
    module: nn.Module, data: ConceptDataset, concept_id: int, batch_size: int, progress: bool
) -> Iterator[Float[Tensor, "token layer neuron"]]:
    """Every layer's ``mlp.hook_post`` on the concept tokens of each batch (float64, CPU), in
    eval mode: dropout would give every pass different activations."""
    model = _bare_model(module)
    n_layers, _ = check_mlp_hooks(model)
    captured: dict[int, Tensor] = {}
    hooks = [(mlp_hook_name(layer), _keep_into(captured, layer)) for layer in range(n_layers)]
    last = mlp_hook_name(n_layers - 1)
    with _eval_mode(module), torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in _batches(data, batch_size, progress, "co-activation"):
            concept = batch.concept_labels == concept_id
            if not concept.any():
                continue
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=last)
            # Each layer on its own device (a model may be spread over several); [token, neuron].
            chosen = [
                captured[layer][concept.to(captured[layer].device)].double().cpu()
                for layer in range(n_layers)
            ]
            yield torch.stack(chosen, dim=1)
            captured.clear()


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """No dropout inside; the module's own mode (train or eval) back on exit."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _keep_into(captured: dict[int, Tensor], layer: int):
    def hook(activation: Tensor, hook: Any) -> None:
        captured[layer] = activation

    return hook


def _batches(data: ConceptDataset, batch_size: int, progress: bool, description: str):
    if batch_size < 1:
        raise NeuroplasticError(f"batch size must be at least 1; got {batch_size}")
    n_batches = (len(data) + batch_size - 1) // batch_size
    return progress_bar(
        data.batches(batch_size), desc=description, total=n_batches, enabled=progress
    )
