"""A chase round's measures against the model it removed from, and chance levels, by hand."""

from __future__ import annotations

import pytest
import torch

from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.experiment.chase import (
    round_measures,
    salient_at_base_chance,
    share_salient_at_base,
)


def test_the_already_salient_share_has_a_chance_level() -> None:
    # 2 layers x 5 neurons; base saliency falls with the flat index.
    base = Ranking("LOC", "probeless", torch.arange(10, 0, -1, dtype=torch.float32).reshape(2, 5))
    first = NeuronSet.of(2, 5, [(0, 0), (0, 1)])  # round 1: the base's top 2
    second = NeuronSet.of(2, 5, [(0, 0), (0, 1), (0, 2), (1, 4)])  # round 2 adds 0:2 and 1:4
    added = NeuronSet.of(2, 5, [(0, 2), (1, 4)])
    # Of the base's top 4 (0:0-0:3), 0:2 is among the added: one of two.
    assert share_salient_at_base(added, second, base) == 0.5
    # By chance: 2 of the top 4 are still available (0:2, 0:3) among the 8 neurons not held.
    assert salient_at_base_chance(first, second, base) == pytest.approx(2 / 8)
    # Round 1 under a global rule takes the top itself: share 1, chance 2 of 10.
    assert share_salient_at_base(first, first, base) == 1.0
    assert salient_at_base_chance(None, first, base) == pytest.approx(2 / 10)


def test_a_later_round_is_measured_against_the_f1_before_its_removal() -> None:
    def row(arm, stage, step, loc):
        return {"arm": arm, "stage": stage, "step": step, "f1": {"LOC": loc}}

    rows = [
        row("concept", "base", 0, 0.9),
        row("concept", "pruned", 0, 0.1),
        row("concept", "retrain-1", 10, 0.8),
        row("concept", "r2-pruned", 10, 0.7),
        row("concept", "r2-retrain-1@5", 15, 0.7),
        row("concept", "r2-retrain-1", 20, 0.78),
    ]
    sets = {"concept": [NeuronSet.of(1, 4, [(0, 0)]), NeuronSet.of(1, 4, [(0, 0), (0, 1)])]}
    base = Ranking("LOC", "probeless", torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    first, second = round_measures(rows, sets, base, "LOC", n_stages=1, steps_per_round=10)
    assert first["arms"]["concept"]["before"] == {"LOC": 0.9}
    assert first["arms"]["concept"]["drop"] == pytest.approx(0.8)
    entry = second["arms"]["concept"]
    # Against its own start (0.8) the target is 0.72 (not 0.81, 90% of base): reached between
    # 5 (0.70) and 10 (0.78) steps into the round.
    assert entry["before"] == {"LOC": 0.8} and entry["drop"] == pytest.approx(0.1)
    assert entry["steps_to_recover"] == pytest.approx(5 + 0.02 / 0.08 * 5)
