"""Predict, at the pruned stage, which surviving neurons will take a removed concept over.

Right after the concept's neurons are removed, and before any retraining, every *surviving*
neuron (live at the stage, not in the removed set) gets a score from each predictor; once
retraining is done the scores are checked against what happened. The predictors:

====================  =======================================================================
``saliency_pruned``   the neuron's saliency for the concept at the pruned stage
``saliency_base``     its saliency at base, before anything was removed
``similarity``        concept similarity of its base top tokens to the concept's tokens (the
                      "primed neurons" of Lo et al.; :mod:`neuroplastic.core.similarity`)
``gradient``          mean |activation x gradient of the concept's loss| over concept tokens, at
                      the pruned stage with the removal held (:func:`gradient_attribution`)
``coactivation``      |correlation| over concept tokens, at base, with the removed neurons'
                      standardized mean activation (:func:`coactivation_score`)
``random``            a seeded uniform score: the floor every predictor must beat
====================  =======================================================================

Every predictor returns a ``[layer, neuron]`` float tensor with NaN for the neurons that are not
candidates. The ground truth (:func:`ground_truth`) comes from the rankings at the pruned and the
last stage; :func:`evaluate_predictions` gives ROC AUC and precision at k per predictor and
truth, one run at a time, and :func:`across_seeds` the mean and 95% t-interval over seeds.

The neurons of one model are not independent samples: an AUC over them describes one run, and
no interval is ever taken over neurons. Seeds are the unit of replication.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from scipy import stats as scipy_stats
from torch import Tensor, nn

from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.intervals import interval
from neuroplastic.config import PREDICTOR_NAMES
from neuroplastic.core.ablation import Ablation
from neuroplastic.core.models import check_mlp_hooks, mlp_hook_name, model_device, run_forward
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.core.stats import NeuronStats
from neuroplastic.core.training import TokenClassifier, lm_token_losses
from neuroplastic.data.concept import IGNORE_TAG, Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes
from neuroplastic.progress import progress as progress_bar

__all__ = [
    "PREDICTORS",
    "GroundTruth",
    "Predictions",
    "across_seeds",
    "coactivation_score",
    "evaluate_arm",
    "evaluate_predictions",
    "gradient_attribution",
    "ground_truth",
    "precision_at_k",
    "predict_at_base",
    "predict_at_pruned",
    "random_score",
    "readable_concept_tokens",
    "roc_auc",
    "saliency_score",
    "similarity_score",
    "survivors",
]

Scores = Float[Tensor, "layer neuron"]
Mask = Bool[Tensor, "layer neuron"]

#: every predictor, in reading order (the order of the evaluation tables); named in the config
#: module, which the command line reads without torch
PREDICTORS = PREDICTOR_NAMES


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


# ---------------------------------------------------------------------------------------------
# All predictors of one arm
# ---------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Every predictor's ``[layer, neuron]`` scores for one arm (NaN: not a candidate)."""

    scores: dict[str, Scores]

    def __post_init__(self) -> None:
        if not self.scores:
            raise NeuroplasticError("no predictor scores")
        shapes = {tuple(s.shape) for s in self.scores.values()}
        if len(shapes) > 1:
            raise NeuroplasticError(f"predictor scores of different shapes: {sorted(shapes)}")

    def merged(self, other: Predictions) -> Predictions:
        return Predictions({**self.scores, **other.scores})

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        tensors = {name: scores.contiguous() for name, scores in self.scores.items()}
        atomic_write_bytes(path, save(tensors))

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise NeuroplasticError(f"predictions file not found: {path}")
        try:
            loaded = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types for a bad file
            raise NeuroplasticError(
                f"{path}: not a readable predictions file ({error}); rerun `neuroplastic run` "
                "on its run directory, which recomputes it while the run's weights are kept"
            ) from error
        ordered = [p for p in PREDICTORS if p in loaded] + sorted(set(loaded) - set(PREDICTORS))
        return cls({name: loaded[name] for name in ordered})

    def to_frame(self) -> pd.DataFrame:
        """One row per neuron: layer, neuron and a column per predictor."""
        first = next(iter(self.scores.values()))
        layer, neuron = torch.meshgrid(
            torch.arange(first.shape[0]), torch.arange(first.shape[1]), indexing="ij"
        )
        columns = {"layer": layer.flatten().numpy(), "neuron": neuron.flatten().numpy()}
        columns |= {name: s.flatten().numpy() for name, s in self.scores.items()}
        return pd.DataFrame(columns)


def predict_at_base(
    module: nn.Module,
    data: ConceptDataset,
    concept: str,
    base: Ranking,
    base_stats: NeuronStats,
    removed: NeuronSet,
    embeddings: TokenEmbeddings | None = None,
    batch_size: int = 32,
    progress: bool = False,
    readable: Bool[Tensor, "layer neuron k"] | None = None,
) -> Predictions:
    """The predictors read at base: ``saliency_base``, ``similarity`` (needs ``embeddings``) and
    ``coactivation``. Call it on the base model with no ablation hook attached (in ``hold`` mode
    before the hold is attached, in ``regrow`` mode before the weights are pruned). Without
    ``embeddings``, or when no base top token is labelled ``concept``, ``similarity`` is left
    out. ``data``, ``base`` and ``readable`` (the base top-token entries similarity may read)
    should all come from the predict half of the probe sentences (:mod:`neuroplastic.core.halves`),
    so that no predictor shares the ground truth's sentences."""
    candidates = survivors(base.alive, removed)
    scores = {"saliency_base": saliency_score(base, candidates)}
    if readable is None:
        readable = torch.ones_like(base_stats.top_token, dtype=torch.bool)
    # Like the primed-neuron analysis, similarity is left out (not scored NaN, which would pass
    # for a chance-level predictor) when no base top token is labelled with the concept.
    if embeddings is not None and readable_concept_tokens(base_stats, concept, readable).numel():
        scores["similarity"] = similarity_score(
            base_stats, embeddings, concept, candidates, readable=readable
        )
    scores["coactivation"] = coactivation_score(
        module, data, concept, removed, candidates, batch_size, progress
    )
    return Predictions(scores)


def predict_at_pruned(
    module: nn.Module,
    data: ConceptDataset,
    concept: str,
    pruned: Ranking,
    removed: NeuronSet,
    seed: int,
    hold: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> Predictions:
    """The predictors read at the pruned stage: ``saliency_pruned``, ``gradient`` and the
    seeded ``random`` floor. The model holds the pruned weights; a hold already attached may
    stay (a second zero-ablation of the same neurons changes nothing). ``hold``: as retraining
    runs, with the removed neurons zero-ablated (``hold`` mode) or without hooks (``regrow``
    mode, weights pruned)."""
    candidates = survivors(pruned.alive, removed)
    return Predictions(
        {
            "saliency_pruned": saliency_score(pruned, candidates),
            "gradient": gradient_attribution(
                module, data, concept, removed, candidates, hold, batch_size, progress
            ),
            "random": random_score(candidates, seed),
        }
    )


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """What happened between the pruned stage and the last one, among the candidates."""

    #: survivors live at both stages: the population every predictor is judged on
    candidates: Mask
    #: saliency at the last stage minus at the pruned stage (NaN outside ``candidates``)
    gain: Scores
    #: ``gain``: the top ``top`` share of candidates by (positive) gain; ``entered``: in the top
    #: share at the last stage and not at the pruned stage
    positives: dict[str, Mask]
    top: float

    @property
    def n_candidates(self) -> int:
        return int(self.candidates.sum())


def ground_truth(
    pruned: Ranking,
    last: Ranking,
    removed: NeuronSet,
    top: float = 0.01,
    population: Mask | None = None,
) -> GroundTruth:
    """The neurons that took the concept over, two ways, among the survivors live at both stages.

    * ``gain``: the ``top`` share (at least one) of candidates with the largest saliency gain
      from ``pruned`` to ``last``, counting only positive gains (a neuron that lost saliency took
      nothing over).
    * ``entered``: candidates in the top ``top`` share by saliency at ``last`` that were not in
      it at ``pruned``. Both top shares are taken among the candidates, so the two stages are
      cut over the same population.
    * ``last_top``: candidates in the top ``top`` share by saliency at ``last``. The two above
      are built from the pruned saliency, which is also a predictor (``saliency_pruned``), so
      that predictor is scored partly against itself (regression to the mean); this truth
      contains no predictor. Score every predictor on the control arm too: its null.

    Saliency here is each stage's normalized rank among the candidates alone (ties share their
    average rank), so a gain is a survivor's movement against the same neurons at both stages,
    never an artefact of others dying, regrowing or being removed. ``population``: a mask the
    candidates must also lie in; give the treatment and its control one population (alive in
    both arms at both stages, outside both removed sets: :func:`paired_population`), or the
    paired difference compares predictions on different neurons. A neuron tied with the last
    one in is in too, so a set can exceed the share; index order never decides.
    """
    if not 0 < top <= 1:
        raise NeuroplasticError(f"top must be a fraction in (0, 1]; got {top}")
    if pruned.scores.shape != last.scores.shape:
        raise NeuroplasticError(
            f"the pruned and last rankings have different shapes: {tuple(pruned.scores.shape)} "
            f"vs {tuple(last.scores.shape)}"
        )
    candidates = survivors(pruned.alive & last.alive, removed)
    if population is not None:
        candidates &= population.bool()
    n = int(candidates.sum())
    if n == 0:
        raise NeuroplasticError("no neuron survives at both stages: nothing to predict")
    n_top = max(1, round(top * n))
    before, after = pruned.saliency_among(candidates), last.saliency_among(candidates)
    gain = _only(after - before, candidates)
    return GroundTruth(
        candidates=candidates,
        gain=gain,
        positives={
            "gain": _top_mask(gain, candidates & (gain > 0), n_top),
            "entered": _top_mask(after, candidates, n_top) & ~_top_mask(before, candidates, n_top),
            "last_top": _top_mask(after, candidates, n_top),
        },
        top=top,
    )


def paired_population(
    arms: Sequence[tuple[Ranking, Ranking, NeuronSet]],
) -> Mask:
    """The neurons a treatment and its controls can all be scored on: alive at both stages in
    every arm (``(pruned, last, removed)`` each) and in no arm's removed set."""
    population = None
    for pruned, last, removed in arms:
        mask = survivors(pruned.alive & last.alive, removed)
        population = mask if population is None else population & mask
    if population is None:
        raise NeuroplasticError("no arms: no population to score them on")
    return population


#: values this close to the cut count as tied with it: float64 round-off of saliency
#: differences is ~1e-16, while two distinct saliencies differ by at least 1 / n_alive^2.
_TIE = 1e-12


def _top_mask(values: Tensor, among: Mask, n_top: int) -> Mask:
    """The ``n_top`` largest ``values`` among ``among``, with every value tied to the last."""
    pool = values[among]
    if len(pool) == 0:
        return torch.zeros_like(among)
    threshold = pool.topk(min(n_top, len(pool))).values[-1]
    return among & (values >= threshold - _TIE)


# ---------------------------------------------------------------------------------------------
# Scoring a prediction
# ---------------------------------------------------------------------------------------------


def _as_arrays(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat float scores (NaN -> -inf: a neuron a predictor cannot score ranks last) and bools."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=float)
    y = np.asarray(positive.cpu() if isinstance(positive, Tensor) else positive, dtype=bool)
    s, y = s.ravel(), y.ravel()
    if s.shape != y.shape:
        raise NeuroplasticError(f"{len(s)} scores but {len(y)} labels")
    return np.where(np.isnan(s), -np.inf, s), y


def roc_auc(scores: Any, positive: Any) -> float:
    """ROC AUC: the chance that a random positive scores above a random negative, ties counting
    one half (Mann-Whitney U / (n1 n0) with average ranks). NaN without both classes."""
    s, y = _as_arrays(scores, positive)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = scipy_stats.rankdata(s, method="average")
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def precision_at_k(scores: Any, positive: Any, k: int | None = None) -> float:
    """Share of positives among the ``k`` highest scores (``k`` defaults to the number of
    positives; NaN when there are none). Scores tied at the cut count by their share of
    positives, the expectation over random tie-breaks, so index order never decides."""
    s, y = _as_arrays(scores, positive)
    k = int(y.sum()) if k is None else int(k)
    if k == 0:
        return math.nan
    if not 0 < k <= len(s):
        raise NeuroplasticError(f"k must be between 1 and the {len(s)} candidates; got {k}")
    threshold = np.sort(s)[::-1][k - 1]
    above, tied = s > threshold, s == threshold
    hits = y[above].sum() + (k - above.sum()) * y[tied].mean()
    return float(hits / k)


def evaluate_predictions(
    predictions: Predictions | Mapping[str, Scores], truth: GroundTruth, k: int | None = None
) -> pd.DataFrame:
    """ROC AUC and precision at ``k`` (default: the number of positives) of every predictor
    against every ground truth, over ``truth.candidates``: the same population for every
    predictor. A candidate a predictor left NaN ranks below all others (``n_unscored`` counts
    them).

    Columns: predictor, truth, auc, precision_at_k, k, n_candidates, n_positive, n_unscored,
    base_rate (n_positive / n_candidates: the precision of a random guess). One run's
    description; its spread comes from seeds (:func:`across_seeds`).
    """
    scores = predictions.scores if isinstance(predictions, Predictions) else dict(predictions)
    candidates = truth.candidates
    rows = []
    for name, values in scores.items():
        if tuple(values.shape) != tuple(candidates.shape):
            raise NeuroplasticError(
                f"predictor {name!r} scores shape {tuple(values.shape)} but the ground truth is "
                f"over {tuple(candidates.shape)} neurons"
            )
        values = values.cpu()[candidates]
        for truth_name, positive in truth.positives.items():
            labels = positive[candidates]
            n_positive = int(labels.sum())
            rows.append(
                {
                    "predictor": name,
                    "truth": truth_name,
                    "auc": roc_auc(values, labels),
                    "precision_at_k": precision_at_k(values, labels, k) if n_positive else math.nan,
                    "k": n_positive if k is None else k,
                    "n_candidates": len(labels),
                    "n_positive": n_positive,
                    "n_unscored": int(values.isnan().sum()),
                    "base_rate": n_positive / len(labels),
                }
            )
    return pd.DataFrame(rows)


def evaluate_arm(
    arm: ArmRun,
    predictions: Predictions,
    top: float = 0.01,
    start: str | None = None,
    end: str | None = None,
    rankings: tuple[Ranking, Ranking] | None = None,
    population: Mask | None = None,
) -> pd.DataFrame:
    """:func:`evaluate_predictions` for one arm of a run: the ground truth from its rankings at
    ``start`` (default ``pruned``) and ``end`` (default the last stage) and its removed set.
    ``rankings``: the two stages' rankings to build the truth from instead (the run passes
    those of the truth half of the probe sentences: :mod:`neuroplastic.core.halves`);
    ``population``: the neurons shared with the arms it is compared with
    (:func:`paired_population`)."""
    start, end = start or arm.start, end or arm.last
    for stage in (start, end):
        if stage not in arm.stages:
            raise NeuroplasticError(
                f"arm {arm.arm!r} has no stage {stage!r}; stages: {', '.join(arm.stages)}"
            )
    before, after = rankings or (arm.stages[start].ranking, arm.stages[end].ranking)
    truth = ground_truth(before, after, arm.ablated, top, population)
    return evaluate_predictions(predictions, truth)


# ---------------------------------------------------------------------------------------------
# Across seeds
# ---------------------------------------------------------------------------------------------

#: measures aggregated across seeds; ``precision_lift`` is precision at k minus the base rate
SEED_MEASURES = ("auc", "precision_at_k", "precision_lift")


def across_seeds(
    per_seed: Mapping[Any, pd.DataFrame] | Sequence[pd.DataFrame], confidence: float = 0.95
) -> pd.DataFrame:
    """Mean and t-interval across seeds of every measure, per predictor and truth.

    ``per_seed`` holds one :func:`evaluate_predictions` frame per seed (a mapping seed -> frame,
    or a list). Each seed's number is one sample; the interval is
    ``mean +/- t(confidence, n-1) * sd / sqrt(n)`` over the ``n`` seeds where the measure is
    defined (``missing`` counts the others; no interval below 2 seeds). Never over neurons.

    Columns: predictor, truth, measure (auc, precision_at_k, precision_lift), n_seeds, missing,
    mean, ci_low, ci_high. For reading against chance: AUC 0.5, precision lift 0.
    """
    frames = dict(per_seed) if isinstance(per_seed, Mapping) else dict(enumerate(per_seed))
    if not frames:
        raise NeuroplasticError("no per-seed evaluations to aggregate")
    needed = {"predictor", "truth", "auc", "precision_at_k", "base_rate"}
    parts = []
    for seed, frame in frames.items():
        missing_columns = needed - set(frame.columns)
        if missing_columns:
            raise NeuroplasticError(
                f"seed {seed}: the evaluation lacks columns {', '.join(sorted(missing_columns))}; "
                "pass frames from evaluate_predictions"
            )
        if frame.duplicated(["predictor", "truth"]).any():
            raise NeuroplasticError(f"seed {seed}: a predictor and truth appear twice")
        parts.append(frame.assign(seed=seed))
    frame = pd.concat(parts, ignore_index=True)
    frame["precision_lift"] = frame["precision_at_k"] - frame["base_rate"]
    rows = []
    for (predictor, truth), group in frame.groupby(["predictor", "truth"], sort=False):
        for measure in SEED_MEASURES:
            values = group[measure].to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            spread = interval(list(finite), confidence)  # one t-interval for the package
            low = math.nan if spread["ci_low"] is None else spread["ci_low"]
            high = math.nan if spread["ci_high"] is None else spread["ci_high"]
            rows.append(
                {
                    "predictor": predictor,
                    "truth": truth,
                    "measure": measure,
                    "n_seeds": len(finite),
                    "missing": len(values) - len(finite),
                    "mean": float(finite.mean()) if len(finite) else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)
