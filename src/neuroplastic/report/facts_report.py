"""The facts study's page (``DIR/report.html``): what the removal took and cost, and how much
of it each protocol brought back, as means and 95% intervals across seeds, from ``facts.json``
(the per-seed files are behind it); for a neuron removal, the surviving neurons that gained
saliency while relearning, from the seeds' ``gainers-*.json`` in ``DIR``
(:mod:`neuroplastic.report.facts_gainers`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from neuroplastic.analysis.intervals import as_text
from neuroplastic.io import atomic_write_text
from neuroplastic.report.facts_gainers import gainers_section
from neuroplastic.report.html import HtmlPage

GENERATOR = "neuroplastic facts"

#: The removal's rows: (label, measure of the removal arm, measure of the control arm).
REMOVAL_ROWS = (
    ("V accuracy after the removal", "removal_v", "control_v"),
    ("V's drop", "removal_drop_v", "control_drop_v"),
    ("V's drop, greedy", "removal_drop_v_greedy", "control_drop_v_greedy"),
    ("T's drop", "removal_drop_t", "control_drop_t"),
    ("retain facts' drop", "removal_drop_retain", "control_drop_retain"),
    (
        "held-out facts' drop (the relation's facts outside T and V)",
        "removal_drop_held_out",
        "control_drop_held_out",
    ),
    ("general loss's rise (nats)", "removal_general_damage", "control_general_damage"),
)
#: Each protocol's rows: (label, measure name after the protocol's prefix).
PROTOCOL_ROWS = (
    ("V after retraining, removal arm", "removal_v"),
    ("V after retraining, control arm", "control_v"),
    ("share of V's drop recovered", "removal_recovered"),
    ("... net of the no-removal arm's change", "removal_recovered_net"),
    ("no-removal arm's change in V", "none_gain"),
    ("removal arm minus control arm (paired)", "gap_to_control"),
    ("share recovered, greedy", "removal_recovered_greedy"),
    ("general loss's rise after retraining (nats)", "removal_general_damage"),
)


def _cell(measures: Mapping[str, Any], name: str) -> str:
    return as_text(measures[name]) if name in measures else ""


def removal_rows(removal: str) -> list[tuple[str, str, str]]:
    """The removal table's rows. A weight edit's control unlearns held-out facts: its drop on
    them is how far it took its own targets, not a spill-over, so it gets a row of its own."""
    if removal not in ("graddiff", "rmu"):
        return list(REMOVAL_ROWS)
    rows = []
    for label, ours, theirs in REMOVAL_ROWS:
        if ours == "removal_drop_held_out":
            rows.append((label, ours, ""))
            rows.append(("the control's drop on the held-out facts it unlearned", "", theirs))
        else:
            rows.append((label, ours, theirs))
    return rows


def removal_text(config: Mapping[str, Any], removed: list[int]) -> tuple[str, str]:
    """What the removal was, and what its control was, in words."""
    removal = config["removal"]
    if removal == "neurons":
        return (
            f"the top {config['fraction']:.1%} of MLP neurons by {config['method']} "
            f"({', '.join(map(str, removed))} neurons), held at zero",
            "a random control of as many neurons in each layer",
        )
    same_method = "the same method on as many held-out facts of the relation"
    if removal == "graddiff":
        return (
            f"gradient difference: {config['graddiff_steps']} steps at "
            f"{config['graddiff_lr']:g} ascending the forget facts' loss and descending the "
            f"retain facts', every weight edited",
            same_method,
        )
    if removal == "rmu":
        layers = ",".join(map(str, config["rmu_updated_layers"]))
        return (
            f"RMU at layer {config['rmu_layer']}: {config['rmu_steps']} steps at "
            f"{config['rmu_lr']:g} on the MLPs of layers {layers}, steering "
            f"{config['rmu_steering']:g}x the mean residual norm, retain weight "
            f"{config['rmu_alpha']:g}",
            same_method,
        )
    return (
        f"a {removal} eraser of rank {removed[0]} held at every layer",
        "random directions removing as much of each layer's variance",
    )


def facts_page(study: Mapping[str, Any], root: str | Path | None = None) -> HtmlPage:
    """The page of a ``facts.json``; ``root``: its directory, whose seeds' gainers files the
    page shows too (none without it)."""
    config, measures = study["config"], study["measures"]
    page = HtmlPage("Facts: does removed knowledge stay removed?", generator=GENERATOR)
    what, control = removal_text(config, sorted(set(study["removed"])))
    page.paragraph(
        f"{config['model']}: {config['forget_relation']} facts removed ({what}), beside "
        f"{control}. {len(study['seeds'])} seeds "
        f"({', '.join(map(str, study['seeds']))}); each splits the known forget facts into T "
        f"and V. Retraining: {config['steps']} steps of {config['batch_size']} at learning "
        f"rate {config['learning_rate']:g}. Accuracy is 4-way multiple choice (chance 0.25) "
        "unless marked greedy. Mean [95% t-interval across seeds]."
    )
    page.heading("What the removal took, and what it cost")
    page.table(
        pd.DataFrame(
            [
                [label, _cell(measures, r), _cell(measures, c)]
                for label, r, c in removal_rows(config["removal"])
            ],
            columns=["", "removal", "control"],
        ),
        index=False,
    )
    page.heading("What retraining brought back")
    for protocol in config["protocols"]:
        rows = [
            [label, _cell(measures, f"{protocol}_{name}")]
            for label, name in PROTOCOL_ROWS
            if f"{protocol}_{name}" in measures
        ]
        page.table(pd.DataFrame(rows, columns=["", protocol]), caption=protocol, index=False)
    lens = lens_table(measures, config["protocols"])
    if lens is not None:
        page.heading("Where V's answers can still be read: the logit lens, layer by layer")
        page.paragraph(
            "Each layer's residual at the position that predicts the answer, read through the "
            "model's final norm and unembedding (nothing fitted), asked V's multiple choice by "
            "each choice's first token. The last layer is the model's own output. A layer that "
            "reads V after the removal as it did at base, while the output does not, holds "
            "answers the removal disconnected rather than removed. Early layers sit near "
            "chance (0.25) for any model: they are not in the unembedding's basis."
        )
        page.table(lens, index=False)
    fitted = lens_table(measures, config["protocols"], prefix="fitted")
    if fitted is not None:
        page.heading("... and through the fitted lens")
        page.paragraph(
            "The same questions, each layer's residual first mapped onto the last layer's by an "
            "affine map fitted for that layer and that state (ridge least squares on the "
            "general-ability sentences, which hold no fact), then read as above. Every state's "
            "maps predict base's last layer, so a layer reads into base's output whatever the "
            "state's later layers do: one that reads V after the removal while the output does "
            "not holds answers that were disconnected, not removed. The last layer is read as "
            "it is (the output). n/a: a state measured before the fitted lens existed (a "
            "retrained model is not kept to be read again)."
        )
        page.table(fitted, index=False)
    if root is not None:
        gainers_section(page, study, Path(root))
    return page


def lens_table(
    measures: Mapping[str, Any], protocols: list[str], prefix: str = "lens"
) -> pd.DataFrame | None:
    """Layers as rows; base, each removal alone and each protocol's removal arm as columns;
    ``prefix``: the lens (``lens`` the logit lens, ``fitted`` the fitted lens)."""
    columns = {
        "base": "base",
        "removal": "after the removal",
        "control": "after the control",
        **{f"{p}_removal": f"removal + {p}" for p in protocols},
    }
    present = {k: v for k, v in columns.items() if f"{prefix}_{k}_L0" in measures}
    if not present:
        return None
    layers = sum(1 for name in measures if name.startswith(f"{prefix}_base_L"))
    rows = [
        [layer, *(_cell(measures, f"{prefix}_{k}_L{layer}") for k in present)]
        for layer in range(layers)
    ]
    return pd.DataFrame(rows, columns=["layer", *present.values()])


def write_facts_report(root: str | Path, study: Mapping[str, Any]) -> Path:
    path = Path(root) / "report.html"
    atomic_write_text(path, facts_page(study, root).to_html())
    return path
