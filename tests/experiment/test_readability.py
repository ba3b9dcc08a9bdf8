"""A run's per-layer probes (``readable``) read off the stage's own passes by taps, against the
same probes running passes of their own (the path a run takes when the residual streams would
not fit in memory, or under a launcher).

The two runs differ in where the probes' residual stream comes from and nothing else: every
other figure of the summary must be the same bits (the taps draw no random numbers and change
no forward), and the probes' AUCs the same to a float's last bits of the residual stream.
"""

from __future__ import annotations

import pytest
from tiny import quiet, tiny_config

import neuroplastic.core.probes as probes
from neuroplastic.experiment.pipeline import run_experiment


def readable_apart(summary: dict) -> tuple[dict, list]:
    """The summary without its probes' AUCs, and those AUCs stage by stage."""
    taken = []
    for arm in summary["arms"].values():
        for stage in arm.get("stages", []):
            taken.append((stage["stage"], stage.pop("readable")))
    return summary, taken


@pytest.mark.slow
def test_probes_read_off_the_stage_passes_score_what_probes_with_passes_of_their_own_do(
    tmp_path, monkeypatch
):
    config = tiny_config(seed=3)
    tapped = run_experiment(config, tmp_path / "tapped", progress=False, log=quiet)
    monkeypatch.setattr(probes, "PROBE_MEMORY", 1)  # too little for taps: passes of their own
    own = run_experiment(config, tmp_path / "own", progress=False, log=quiet)

    tapped, tapped_auc = readable_apart(tapped)
    own, own_auc = readable_apart(own)
    assert tapped == own
    assert [stage for stage, _ in tapped_auc] == [stage for stage, _ in own_auc]
    assert len(tapped_auc) >= 6  # both arms, every stage
    for (stage, by_tap), (_, by_pass) in zip(tapped_auc, own_auc, strict=True):
        assert set(by_tap) == set(by_pass) == {"0", "1"}, stage
        for layer, value in by_tap.items():
            assert value == pytest.approx(by_pass[layer], abs=1e-4), (stage, layer)
    # the probes read something at base (else agreement would be vacuous)
    assert any(abs(value - 0.5) > 0.05 for value in tapped_auc[0][1].values())
