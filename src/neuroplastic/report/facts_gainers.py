"""The facts page's section on the surviving neurons that gained saliency for the forget facts
while each held arm relearned (neuron removals only), from the seeds' ``gainers-<protocol>.json``
(:mod:`neuroplastic.experiment.facts_gainers`): how concentrated the gain was in the removal arm
and its control, each seed's top gainers, and CircuitsVis views of the removal arm's top gainers
on a few facts' prompts before and after relearning, drawn as the run report draws its neurons
(:func:`~neuroplastic.report.views.add_side_by_side`)."""

from __future__ import annotations

import html as _html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_gainers import gainers_path, read_gainers
from neuroplastic.report.html import HtmlPage
from neuroplastic.report.style import fmt
from neuroplastic.report.views import NeuronExamples, add_side_by_side

#: How the views' prompts are named on the page.
GROUPS = {"forget_v": "V", "retain": "retain"}


def gainers_files(
    study: Mapping[str, Any], root: Path
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
    """Every seed's gainers by (protocol, seed), and a note for each one missing or unreadable."""
    found, missing = {}, []
    for protocol in study["config"]["protocols"]:
        for seed in study["seeds"]:
            path = gainers_path(root / f"seed-{seed}", protocol)
            try:
                content = read_gainers(path)
            except NeuroplasticError as error:
                missing.append(str(error))
                continue
            arms = content.get("arms", {})
            for arm in ("removal", "control"):
                if arm not in arms:
                    missing.append(f"seed {seed}, {protocol}, {arm} arm: no gainers in {path.name}")
            if arms:
                found[protocol, seed] = content
    return found, missing


def gainers_section(page: HtmlPage, study: Mapping[str, Any], root: Path) -> None:
    """The section, for a neuron removal; nothing for any other (it holds no neurons)."""
    config = study["config"]
    if config["removal"] != "neurons":
        return
    found, missing = gainers_files(study, root)
    page.heading("Which surviving neurons took the forget facts over")
    page.paragraph(
        "After each protocol's retraining, the statistics at the recall positions of the forget "
        f"and retain facts were collected again, the arm's neurons still held, and ranked by "
        f"{config['method']}, as the removal was chosen. Each arm's population is its "
        "survivors: every neuron it does not hold, alive at both ends, the same neurons before "
        "and after. Saliency is re-ranked among them (1 = most salient), and a neuron's gain is "
        "its saliency after relearning minus at the start (base weights, the arm's neurons "
        "held): the main study's gain, measured the same way. 'Share of the gain in the top "
        "1%' is the part of the population's positive gain that its top 1% of gainers carry: "
        "larger when the forget facts moved into a few neurons than when retraining moved many "
        "a little. One model per seed: a description, not an estimate."
    )
    if not found:
        page.paragraph("No gainers were found in this study's seed directories.")
    else:
        page.table(concentration_table(found), index=False, float_format="{:.3f}")
        for i, ((protocol, seed), content) in enumerate(found.items()):
            # Only the first is open: each holds its views, and they are long.
            _seed_gainers(page, protocol, seed, content, open=i == 0)
    for note in missing:
        page.raw(f'<div style="font-size:0.85rem;color:#57606a">{_html.escape(note)}</div>')


def concentration_table(found: Mapping[tuple[str, int], dict[str, Any]]) -> pd.DataFrame:
    """One row per protocol and seed: each arm's population and its top 1%'s share of the
    gain, and the removal arm's share minus its control's."""
    rows = []
    for (protocol, seed), content in found.items():
        arms = content["arms"]
        share = {
            arm: _float(arms.get(arm, {}).get("gain_share_top")) for arm in ("removal", "control")
        }
        rows.append(
            {
                "protocol": protocol,
                "seed": seed,
                "population (removal arm)": arms.get("removal", {}).get("population"),
                "share of the gain in the top 1%, removal arm": share["removal"],
                "... control arm": share["control"],
                "removal minus control": share["removal"] - share["control"],
            }
        )
    return pd.DataFrame(rows)


def gainers_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """An arm's top gainers, most gain first."""
    rows = record["gainers"]
    return pd.DataFrame(
        {
            "neuron": [f"L{g['layer']}:N{g['neuron']}" for g in rows],
            "saliency at base (nothing held)": [_float(g["saliency_base"]) for g in rows],
            "saliency at start": [g["saliency_start"] for g in rows],
            "saliency after": [g["saliency_end"] for g in rows],
            "gain": [g["gain"] for g in rows],
            "rank at start → after": [
                f"{fmt(g['rank_start'], '.1f')} → {fmt(g['rank_end'], '.1f')}" for g in rows
            ],
            "score at start": [_float(g["score_start"]) for g in rows],
            "score after": [_float(g["score_end"]) for g in rows],
        }
    )


def _seed_gainers(
    page: HtmlPage, protocol: str, seed: int, content: Mapping[str, Any], open: bool
) -> None:
    arms = content["arms"]
    with page.details(f"{protocol}, seed {seed}: the top gainers", open=open):
        for arm in ("removal", "control"):
            if arm not in arms:
                continue
            record = arms[arm]
            page.table(
                gainers_table(record),
                caption=(
                    f"{arm} arm: {record['held']} neurons held, {record['population']} "
                    f"survivors; state {record['state']} against state {record['start']}"
                ),
                index=False,
                float_format="{:.3f}",
            )
        if "removal" in arms and arms["removal"]["view"]["neurons"]:
            _views(page, protocol, arms["removal"]["view"])


def _views(page: HtmlPage, protocol: str, view: Mapping[str, Any]) -> None:
    """Each of the removal arm's top gainers on the facts' prompts: before (base weights, the
    removal held) beside after relearning (the removal still held)."""
    prompts = view["prompts"]
    groups = ", ".join(
        f"{i + 1}: {GROUPS.get(p['group'], p['group'])} ({p['fact']})"
        for i, p in enumerate(prompts)
    )
    page.paragraph(
        f"The removal arm's top {len(view['neurons'])} gainers on facts' prompts, each in the "
        f"first evaluation template of its relation followed by its answer ({groups}). Each "
        "column is coloured on its own scale (CircuitsVis colours by the view's largest "
        "activation); hover a token for its value."
    )
    for index, (layer, neuron) in enumerate(view["neurons"]):
        columns = [_examples(view, index, side) for side in ("before", "after")]
        add_side_by_side(
            page,
            columns,
            [
                f"L{layer}:N{neuron} before: base, the removal held",
                f"L{layer}:N{neuron} after {protocol}, the removal held",
            ],
        )


def _examples(view: Mapping[str, Any], index: int, side: str) -> NeuronExamples:
    """One gainer's activations on every prompt at one side, as a neuron view draws them, its
    five largest tokens over the prompts listed above it."""
    layer, neuron = view["neurons"][index]
    prompts = view["prompts"]
    values = [np.asarray(p[side], dtype=np.float32).reshape(len(p["tokens"]), -1) for p in prompts]
    activations = [v[:, index] for v in values]
    flat = [
        (float(a[position]), s, position)
        for s, a in enumerate(activations)
        for position in range(len(a))
    ]
    largest = sorted(flat, key=lambda item: -item[0])[:5]
    top = pd.DataFrame(
        {
            "k": range(len(largest)),
            "value": [value for value, _, _ in largest],
            "sentence": [s for _, s, _ in largest],
            "position": [position for _, _, position in largest],
            "token": [prompts[s]["tokens"][position] for _, s, position in largest],
            "label": [GROUPS.get(prompts[s]["group"], prompts[s]["group"]) for _, s, _ in largest],
        }
    )
    return NeuronExamples(
        layer,
        neuron,
        f"L{layer}:N{neuron}",
        [list(p["tokens"]) for p in prompts],
        activations,
        top,
        alive=any(bool(np.any(a != 0)) for a in activations),
        full=True,
    )


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
