"""The tagging head's own score for the concept and the AUC of its order.

Expectations by hand: log-odds from a softmax written out, and AUCs counted pair by pair.
"""

from __future__ import annotations

import math

import pytest
import torch

from neuroplastic.core.head_reading import HeadScores, concept_log_odds, concept_tags
from neuroplastic.data.concept import IGNORE_CONCEPT, Batch
from neuroplastic.errors import NeuroplasticError

TAGS = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")


def pairwise_auc(scores: list[float], positive: list[bool]) -> float:
    """The share of (concept, other) token pairs the score orders right, ties a half."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    won = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return won / (len(pos) * len(neg))


def test_the_concepts_tags_are_its_b_and_i_tags():
    assert concept_tags(TAGS, "LOC") == [1, 2]
    assert concept_tags(TAGS, "PER") == [3, 4]
    with pytest.raises(NeuroplasticError, match="no tag marks ORG"):
        concept_tags(TAGS, "ORG")


def test_the_log_odds_are_the_softmax_written_out():
    logits = torch.tensor([[0.5, 2.0, -1.0, 0.0, 0.3], [3.0, -2.0, -2.5, 1.0, 0.0]])
    got = concept_log_odds(logits, [1, 2])
    for row, value in zip(logits.tolist(), got.tolist(), strict=True):
        z = sum(math.exp(v) for v in row)
        p = (math.exp(row[1]) + math.exp(row[2])) / z
        assert value == pytest.approx(math.log(p / (1 - p)), abs=1e-12)


def batch_of(logits: torch.Tensor, concept: torch.Tensor, sentence_index: list[int]) -> Batch:
    n, length = concept.shape
    return Batch(
        tokens=torch.zeros(n, length, dtype=torch.long),
        attention_mask=torch.ones(n, length, dtype=torch.long),
        tag_labels=torch.zeros(n, length, dtype=torch.long),
        concept_labels=concept,
        word_ids=torch.zeros(n, length, dtype=torch.long),
        sentence_index=torch.tensor(sentence_index),
    )


def test_the_heads_reading_is_the_auc_of_its_order_over_the_sentences_asked():
    """Three sentences of five positions (the first a special token, left out); concept id 1.
    The reading over any sentences is the pairwise AUC of the log-odds, by hand."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, len(TAGS), generator=generator)
    concept = torch.tensor(
        [[IGNORE_CONCEPT, 1, 0, 0, 1], [IGNORE_CONCEPT, 0, 1, 0, 0], [IGNORE_CONCEPT, 1, 1, 0, 0]]
    )
    scores = HeadScores(TAGS, "LOC")
    scores.record(batch_of(logits, concept, [7, 3, 5]), logits)
    for asked in ([3, 5, 7], [5, 7]):
        row_of = {7: 0, 3: 1, 5: 2}
        values, positive = [], []
        for index in sorted(asked):
            row = row_of[index]
            for pos in range(1, 5):
                values.append(float(concept_log_odds(logits[row, pos : pos + 1], [1, 2])[0]))
                positive.append(bool(concept[row, pos] == 1))
        reading = scores.reading(asked, concept_id=1)
        assert reading["auc"] == pytest.approx(pairwise_auc(values, positive), abs=1e-12)
        assert reading["sign_free"] == max(reading["auc"], 1 - reading["auc"])
        assert reading["low"] <= reading["auc"] <= reading["high"]
    with pytest.raises(NeuroplasticError, match="not kept for 1 of the sentences"):
        scores.reading([3, 4], concept_id=1)


def test_a_head_that_orders_the_concept_first_reads_one_whatever_its_threshold():
    """Every concept token's LOC logit above every other token's, yet below O everywhere: the
    head tags no LOC at all (its F1 would be 0), and its order is perfect (AUC 1)."""
    logits = torch.zeros(2, 4, len(TAGS))
    logits[..., 0] = 10.0  # O wins every argmax
    concept = torch.tensor([[IGNORE_CONCEPT, 1, 0, 0], [IGNORE_CONCEPT, 0, 1, 0]])
    logits[..., 1] = torch.where(concept == 1, 2.0, -2.0)
    assert (logits.argmax(-1) == 0).all()
    scores = HeadScores(TAGS, "LOC")
    scores.record(batch_of(logits, concept, [0, 1]), logits)
    assert scores.reading([0, 1], concept_id=1)["auc"] == 1.0
