"""How well the tagging head itself orders the concept's tokens: the AUC of its own score.

A probe asks whether the concept can be read from a layer; the head's F1 asks whether the head
decides it. Between them sits the question an AUC of the head's own score answers: does the
head still rank the concept's tokens above the others, whatever its threshold? A removal that
leaves this order intact and wrecks F1 moved the concept's scores across the head's decision
boundary; one that scrambles the order took what the head reads.

The score of a token is the head's log-odds of the concept's tags (``B-LOC``, ``I-LOC``) against
every other tag, from the logits the evaluation computes anyway (:class:`HeadScores`, given to
:func:`~neuroplastic.core.training.evaluate`). Nothing is fitted, so any sentences may score it;
a run reads it on the probes' scoring half, beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.core.probes import reading_of
from neuroplastic.data.concept import IGNORE_CONCEPT, Batch
from neuroplastic.errors import NeuroplasticError


def concept_tags(tag_names: Sequence[str], concept: str) -> list[int]:
    """The ids of the tags that mark ``concept`` (``B-LOC`` and ``I-LOC`` for LOC)."""
    tags = [i for i, name in enumerate(tag_names) if name.partition("-")[2] == concept]
    if not tags:
        raise NeuroplasticError(f"no tag marks {concept} among {', '.join(tag_names)}")
    return tags


def concept_log_odds(
    logits: Float[Tensor, "tokens n_tags"], tags: Sequence[int]
) -> Float[Tensor, " tokens"]:
    """Per token, log P(one of ``tags``) - log P(any other tag) under the head's softmax."""
    logits = logits.double()
    chosen = torch.zeros(logits.shape[-1], dtype=torch.bool)
    chosen[list(tags)] = True
    return logits[:, chosen].logsumexp(-1) - logits[:, ~chosen].logsumexp(-1)


class HeadScores:
    """Keeps, per sentence, each real token's :func:`concept_log_odds` and concept-label id,
    from the head's logits on the batches an evaluation runs (:meth:`record`); :meth:`reading`
    gives the AUC over any of those sentences."""

    def __init__(self, tag_names: Sequence[str], concept: str) -> None:
        self.tags = concept_tags(tag_names, concept)
        self._sentences: dict[int, tuple[Tensor, Tensor]] = {}

    def record(self, batch: Batch, logits: Float[Tensor, "batch pos n_tags"]) -> None:
        real = batch.concept_labels != IGNORE_CONCEPT
        logits = logits.detach().float().cpu()
        for row, index in enumerate(batch.sentence_index.tolist()):
            mask = real[row]
            scores = concept_log_odds(logits[row][mask], self.tags)
            self._sentences[index] = (scores, batch.concept_labels[row][mask])

    def reading(self, sentences: Sequence[int], concept_id: int) -> dict[str, float]:
        """The raw AUC of the head's score for the concept's tokens against the others on
        ``sentences``, its sign-free twin and its 95% interval, clustered by sentence (the
        probes' reading, :func:`~neuroplastic.core.probes.probe_readings_of`)."""
        missing = [i for i in sentences if i not in self._sentences]
        if missing:
            raise NeuroplasticError(
                f"the head's scores were not kept for {len(missing)} of the sentences asked "
                f"(sentence {missing[0]} first): evaluate them with the scores held"
            )
        order = sorted(set(sentences))
        scores = torch.cat([self._sentences[i][0] for i in order])
        labels = torch.cat([self._sentences[i][1] for i in order])
        owner = torch.cat(
            [torch.full((len(self._sentences[i][1]),), i, dtype=torch.long) for i in order]
        )
        positive = labels == concept_id
        if positive.all() or not positive.any():
            raise NeuroplasticError("the head's reading needs concept tokens and others")
        return reading_of(scores.numpy(), positive, owner)


__all__ = ["HeadScores", "concept_log_odds", "concept_tags"]
