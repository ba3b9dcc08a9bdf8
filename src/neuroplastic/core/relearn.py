"""What retraining learns from: relearning, or learning the concept anew?

A removed concept that comes back when retraining shows it could be *relearned* (something of
it survived) or *learned anew* (retraining simply teaches it again). These choices of the run
separate the two:

- ``--relearn same``: the training batches, as in the paper.
- ``--relearn masked``: the same batches with the concept's tokens out of the tagging loss
  (:func:`without_concept`): the text is unchanged, but nothing supervises the concept.
- ``--relearn retain``: only the training sentences that never mention the concept (the
  unlearning literature's retain set), for the same number of steps.
- ``--relearn-sentences N``: a seeded subset of N sentences that mention the concept, cycled
  through for the same steps (how little data brings it back).

Every arm of a run retrains the same way, so the control stays paired. The naive arm
(``--naive``) fine-tunes its base with :func:`concept_neutral_loss`: a model that never learned
the concept, and was never taught to refuse it either, whose retraining curve is first learning,
for :func:`neuroplastic.core.curves.savings`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from neuroplastic.config import ExperimentConfig
from neuroplastic.data.concept import IGNORE_TAG, Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError

LossFn = Callable[[nn.Module, Batch], Tensor]


def without_concept(batch: Batch, concept_id: int) -> Batch:
    """``batch`` with the concept's tokens out of the tagging loss (their tags ignored); the
    tokens, the attention and every other label are unchanged."""
    hidden = batch.concept_labels == concept_id
    return replace(batch, tag_labels=batch.tag_labels.masked_fill(hidden, IGNORE_TAG))


def concept_masked(loss_fn: LossFn, concept_id: int) -> LossFn:
    """``loss_fn`` that never sees the concept's tags: their tokens give it no gradient."""

    def loss(module: nn.Module, batch: Batch) -> Tensor:
        return loss_fn(module, without_concept(batch, concept_id))

    return loss


def concept_tag_ids(tag_names: Sequence[str], concept: str) -> list[int]:
    """The tag classes of ``concept`` (``B-LOC``, ``I-LOC``; or ``LOC`` in an IO scheme)."""
    return [i for i, tag in enumerate(tag_names) if tag == concept or tag[2:] == concept]


def concept_neutral_loss(concept_id: int, concept_tags: Sequence[int]) -> LossFn:
    """The tagging loss of a model that neither learns the concept nor learns to refuse it.

    Leaving the concept's tokens out of the loss (:func:`concept_masked`) is not enough: every
    other token's softmax still pushes the concept's classes down, so a base fine-tuned that way
    is taught never to output them, and relearning from it measures, in part, the time to undo
    that suppression. Here the concept's classes are also out of the softmax (their logits set
    to -inf before it), so their head rows get exactly zero gradient and stay as initialised,
    apart from AdamW's decoupled weight decay (a factor of about 1 - 1e-6 per step)."""
    tags = torch.tensor(sorted(concept_tags), dtype=torch.long)
    if not len(tags):
        raise NeuroplasticError("the concept has no tag classes to take out of the softmax")

    def loss(module: nn.Module, batch: Batch) -> Tensor:
        blind = without_concept(batch, concept_id)
        logits = module(blind.tokens, blind.attention_mask)
        logits = logits.index_fill(-1, tags.to(logits.device), float("-inf"))
        return nn.functional.cross_entropy(
            logits.flatten(0, 1), blind.tag_labels.flatten(), ignore_index=IGNORE_TAG
        )

    return loss


def mentions(data: ConceptDataset, index: int, concept: str) -> bool:
    """Whether sentence ``index`` has a word of the concept (before any truncation)."""
    return concept in data.sentences[index].entity_labels


def relearn_indices(data: ConceptDataset, config: ExperimentConfig) -> list[int] | None:
    """The training sentences retraining reads (None: all of them, in their order)."""
    concept = config.concept
    if config.relearn == "retain":
        kept = [i for i in range(len(data)) if not mentions(data, i, concept)]
        if not kept:
            raise NeuroplasticError(
                f"--relearn retain keeps the training sentences with no {concept} word, and "
                f"every one of the {len(data)} has one; use --relearn same or masked"
            )
        return kept
    if config.relearn_sentences:
        with_concept = [i for i in range(len(data)) if mentions(data, i, concept)]
        if len(with_concept) < config.relearn_sentences:
            raise NeuroplasticError(
                f"--relearn-sentences {config.relearn_sentences} asks for more sentences than "
                f"the {len(with_concept)} training sentences that mention {concept}; give "
                f"{len(with_concept)} or less"
            )
        rng = random.Random(f"neuroplastic-relearn-{config.seed}")
        return sorted(rng.sample(with_concept, config.relearn_sentences))
    return None


def relearn_data(data: ConceptDataset, config: ExperimentConfig) -> ConceptDataset:
    """What every arm retrains on (:func:`relearn_indices` of the training sentences)."""
    indices = relearn_indices(data, config)
    return data if indices is None else data.subset(indices)


def relearn_loss(loss_fn: LossFn, config: ExperimentConfig, concept_id: int) -> LossFn:
    """Retraining's loss: ``loss_fn``, with the concept's tokens out of it under ``masked``."""
    return concept_masked(loss_fn, concept_id) if config.relearn == "masked" else loss_fn


def describe(config: ExperimentConfig, n_sentences: int) -> str:
    """One line for the report and the log: what retraining learned from."""
    if config.relearn == "retain":
        return (
            f"retraining read only the {n_sentences} training sentences with no "
            f"{config.concept} word (the retain set)"
        )
    if config.relearn_sentences:
        text = (
            f"retraining cycled through {n_sentences} training sentences that mention "
            f"{config.concept}"
        )
    else:
        text = f"retraining read the {n_sentences} training sentences"
    if config.relearn == "masked":
        text += f", with the {config.concept} tokens out of the loss (no concept supervision)"
    return text
