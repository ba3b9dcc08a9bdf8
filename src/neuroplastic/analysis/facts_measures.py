"""What a facts study measured, per seed and across seeds.

Per seed (:func:`seed_measures`), from the accuracy on forget-V of each model state:

- the removal's drop on V and T against its cost: the drop on retain facts and the rise of the
  general-ability loss; the same for the control (as many random neurons per layer), and the
  paired difference;
- under each protocol, V after retraining in each arm, and the share of the drop recovered:
  ``(V after removal+relearn - V after removal) / (V at base - V after removal)``. It is a
  share only when the removal took something: under :data:`MIN_DROP` of V accuracy it is
  undefined (None), not censored. ``recovered_net`` subtracts what the same retraining taught
  the model with no removal (``none_gain``: V after base+relearn minus V at base), since
  training on T may teach V by itself; ``gap_to_control`` is V after the removal arm's
  retraining minus V after the control arm's, the same seed's batches.

With more retrainers (the retrainer's best case: other learning rates, LoRA beside full
fine-tuning), ``<protocol>_best_<arm>_v`` is each seed's highest V over every retrainer,
chosen after the fact, and ``..._recovered`` its recovery.

Across seeds (:func:`aggregate`): each measure's mean and t-interval, seeds the unit. Accuracy
is multiple choice among four answers (chance 0.25) unless the name says ``greedy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from neuroplastic.analysis.intervals import Bounds, interval, paired

#: The smallest drop of V accuracy (multiple choice) that makes recovery a share: 0.1 of the
#: facts, about 4-5 facts of a forget-V of 45 and more than one fact of any V this study has.
MIN_DROP = 0.1
#: Accuracy (multiple choice) and greedy exact match; the suffix each gives a measure's name.
KINDS: dict[str, str] = {"multiple_choice": "", "greedy": "_greedy"}
#: Measures that compare two arms of the same seed: paired differences.
PAIRED_SUFFIXES = ("_vs_control", "_gap_to_control")
#: What a grid's comparison sets side by side for each cell, of the removal alone: V right
#: after it and after its control, and its cost (retain facts, the relation's held-out facts,
#: the general loss).
COMPARED_REMOVAL = (
    "removal_v",
    "control_v",
    "removal_drop_retain",
    "removal_drop_held_out",
    "removal_general_damage",
    "lens_base_fixed",
    "lens_removal_fixed",
    "lens_control_fixed",
    "fitted_base_fixed",
    "fitted_removal_fixed",
    "fitted_control_fixed",
)
#: ... and of each protocol, after its prefix: V after retraining the removal arm, the share of
#: V's drop recovered, net of the no-removal arm's change, and the retrainer's best case.
COMPARED_PROTOCOL = ("removal_v", "removal_recovered", "removal_recovered_net", "best_removal_v")


def compared_measures(protocols: Sequence[str]) -> list[str]:
    """The comparison's measures in column order; a study has those its settings make
    (``removal_drop_held_out`` with held-out facts, ``best_`` with a best case)."""
    return [*COMPARED_REMOVAL, *(f"{p}_{name}" for p in protocols for name in COMPARED_PROTOCOL)]


def _share(gain: float, drop: float) -> float | None:
    return gain / drop if drop >= MIN_DROP else None


def seed_measures(
    states: Mapping[str, Mapping[str, Any]],
    protocols: Sequence[str],
    best_case_tags: Sequence[str] = (),
) -> dict[str, float | None]:
    """One seed's measures from its states' scores (``scores.jsonl`` by state name);
    ``best_case_tags`` name the other retrainers' states (``"@0.0001"``, ``"@lora"``)."""
    base = states["base"]
    out: dict[str, float | None] = {}
    for kind, suffix in KINDS.items():
        out[f"base_v{suffix}"] = base["forget_v"][kind]
        for arm in ("removal", "control"):
            after = states[arm]
            out[f"{arm}_v{suffix}"] = after["forget_v"][kind]
            out[f"{arm}_drop_v{suffix}"] = base["forget_v"][kind] - after["forget_v"][kind]
            out[f"{arm}_drop_t{suffix}"] = base["forget_t"][kind] - after["forget_t"][kind]
            out[f"{arm}_drop_retain{suffix}"] = base["retain"][kind] - after["retain"][kind]
            if "held_out" in base:  # the forget relation's facts that no removal targeted
                out[f"{arm}_drop_held_out{suffix}"] = (
                    base["held_out"][kind] - after["held_out"][kind]
                )
        out[f"drop_v{suffix}_vs_control"] = (
            out[f"removal_drop_v{suffix}"] - out[f"control_drop_v{suffix}"]  # type: ignore[operator]
        )
    for arm in ("removal", "control"):
        out[f"{arm}_general_damage"] = states[arm]["general_loss"] - base["general_loss"]
    # The removal's own specificity: V's drop beyond the retain facts' drop.
    out["removal_specificity"] = out["removal_drop_v"] - out["removal_drop_retain"]  # type: ignore[operator]
    for protocol in protocols:
        for kind, suffix in KINDS.items():
            at_base = base["forget_v"][kind]
            none_gain = states[f"{protocol}/none"]["forget_v"][kind] - at_base
            out[f"{protocol}_none_gain{suffix}"] = none_gain
            for arm in ("removal", "control"):
                removed = states[arm]["forget_v"][kind]
                relearned = states[f"{protocol}/{arm}"]["forget_v"][kind]
                out[f"{protocol}_{arm}_v{suffix}"] = relearned
                out[f"{protocol}_{arm}_recovered{suffix}"] = _share(
                    relearned - removed, at_base - removed
                )
                out[f"{protocol}_{arm}_recovered_net{suffix}"] = _share(
                    relearned - removed - none_gain, at_base - removed
                )
            out[f"{protocol}_gap_to_control{suffix}"] = (
                states[f"{protocol}/removal"]["forget_v"][kind]
                - states[f"{protocol}/control"]["forget_v"][kind]
            )
        out[f"{protocol}_removal_general_damage"] = (
            states[f"{protocol}/removal"]["general_loss"] - base["general_loss"]
        )
        if best_case_tags:
            out |= _best_case(states, protocol, ["", *best_case_tags])
    return out | lens_measures(states, protocols)


def lens_measures(
    states: Mapping[str, Mapping[str, Any]], protocols: Sequence[str]
) -> dict[str, float | None]:
    """V's multiple choice through the logit lens at each layer (``lens_<state>_L<layer>``)
    for base, each removal alone and each protocol's arms; and every one of those states read
    at one layer fixed in advance (``lens_<state>_fixed``): the layer, other than the last
    (the output), where base reads V best (``lens_layer``). A maximum taken per state would
    favour noise: over thirty layers near chance, the best of them sits well above it.

    The same through the fitted lens (``fitted_<state>_L<layer>``, ``fitted_<state>_fixed``,
    ``fitted_layer``), whose fixed layer is the *earliest* where base reads V best: every
    layer is mapped onto the output, so base's best is often reached at several layers, and
    the earliest of them is the one that a cut further downstream leaves readable.

    Nothing for a lens base was not read through (a model without hook points); None for a
    state measured without it (a run resumed from before the lens: retrained models are not
    kept to be read again)."""
    return _lens_measures(states, protocols, "forget_v_lens", "lens", earliest=False) | (
        _lens_measures(states, protocols, "forget_v_fitted", "fitted", earliest=True)
    )


def _lens_measures(
    states: Mapping[str, Mapping[str, Any]],
    protocols: Sequence[str],
    part: str,
    prefix: str,
    earliest: bool,
) -> dict[str, float | None]:
    chosen = ["base", "removal", "control"]
    chosen += [f"{p}/{arm}" for p in protocols for arm in ("removal", "control", "none")]
    base = states["base"].get(part)
    if base is None:
        return {}
    inner = range(len(base) - 1)
    layer = max(inner, key=lambda i: (base[i], -i if earliest else i))
    out: dict[str, float | None] = {f"{prefix}_layer": float(layer)}
    for state in chosen:
        per_layer = states[state].get(part, [None] * len(base))
        name = state.replace("/", "_")
        out[f"{prefix}_{name}_fixed"] = per_layer[layer]
        out |= {f"{prefix}_{name}_L{i}": value for i, value in enumerate(per_layer)}
    return out


def _best_case(
    states: Mapping[str, Mapping[str, Any]], protocol: str, tags: Sequence[str]
) -> dict[str, float | None]:
    """The retrainer's best case: per arm, the highest V after retraining over every learning
    rate, chosen after the fact (it is an upper bound on what one rate gives, not a rate one
    could pick beforehand); and the recovery it makes. ``_retrainer_index`` says which
    retrainer won (0: the main one, then the others in the order of ``tags``: each learning
    rate, each adapter)."""
    out: dict[str, float | None] = {}
    at_base = states["base"]["forget_v"]["multiple_choice"]
    for arm in ("removal", "control", "none"):
        values = [states[f"{protocol}{tag}/{arm}"]["forget_v"]["multiple_choice"] for tag in tags]
        best = max(values)
        out[f"{protocol}_best_{arm}_v"] = best
        out[f"{protocol}_best_{arm}_retrainer_index"] = float(values.index(best))
        if arm != "none":
            removed = states[arm]["forget_v"]["multiple_choice"]
            out[f"{protocol}_best_{arm}_recovered"] = _share(best - removed, at_base - removed)
    return out


def bounds_of(name: str) -> Bounds | None:
    """The range a measure cannot leave, which its interval keeps to (None: unbounded).
    Accuracies lie in [0, 1]; a drop, gain or gap is a difference of two accuracies, in
    [-1, 1] (``drop_v_vs_control`` too: the base is shared, so it is control V minus removal
    V); specificity is a difference of two drops. Shares recovered, losses and indices are
    unbounded."""
    if any(part in name for part in ("recovered", "general", "index")):
        return None
    if name in ("lens_layer", "fitted_layer"):
        return None
    if name.startswith(("lens_", "fitted_")):
        return (0.0, 1.0)
    if "specificity" in name:
        return (-2.0, 2.0)
    if any(part in name for part in ("drop", "gain", "gap")):
        return (-1.0, 1.0)
    if name.endswith(("_v", "_v_greedy")):
        return (0.0, 1.0)
    return None


def aggregate(seed_summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each measure across seeds: mean and 95% t-interval, kept within the measure's range
    (:func:`bounds_of`; paired measures also with the difference 80% power would detect),
    seeds in the order given."""
    if not seed_summaries:
        return {}
    names = list(seed_summaries[0]["measures"])
    out = {}
    for name in names:
        values = [s["measures"].get(name) for s in seed_summaries]
        bounds = bounds_of(name)
        out[name] = (
            paired(values, bounds=bounds)
            if name.endswith(PAIRED_SUFFIXES)
            else interval(values, bounds=bounds)
        )
    return out
