"""A grid of facts studies side by side (``DIR/comparison.html``): one row per cell, what its
removal took and cost, and how much of it each protocol brought back, as means and 95%
intervals across seeds, from ``comparison.json`` alone (each cell's own page is behind it)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from neuroplastic.analysis.facts_measures import MIN_DROP
from neuroplastic.analysis.intervals import as_text, number_text
from neuroplastic.experiment.facts_grid_plan import value_text
from neuroplastic.io import atomic_write_text
from neuroplastic.report.html import HtmlPage

GENERATOR = "neuroplastic facts --grid"

#: Each compared measure's column, the removal's own: (measure, label).
REMOVAL_COLUMNS = (
    ("removal_v", "V after the removal"),
    ("control_v", "V after its control"),
    ("removal_drop_retain", "retain facts' drop"),
    ("removal_drop_held_out", "held-out facts' drop"),
    ("removal_general_damage", "general loss's rise (nats)"),
    ("lens_base_fixed", "V through the logit lens at base's best inner layer"),
    ("lens_removal_fixed", "... after the removal"),
    ("lens_control_fixed", "... after its control"),
    ("fitted_base_fixed", "V through the fitted lens at the earliest of base's best inner layers"),
    ("fitted_removal_fixed", "... after the removal (fitted lens)"),
    ("fitted_control_fixed", "... after its control (fitted lens)"),
)
#: ... and each protocol's, after its prefix.
PROTOCOL_COLUMNS = (
    ("removal_v", "V after retraining"),
    ("removal_recovered", "share of V's drop recovered"),
    ("removal_recovered_net", "recovered, net of no removal"),
    ("best_removal_v", "best V, chosen after the fact"),
)


def columns(comparison: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(measure, label) of every column some cell has, in the comparison's order."""
    labels = dict(REMOVAL_COLUMNS)
    for protocol in comparison["settings"]["protocols"]:
        labels |= {f"{protocol}_{name}": f"{protocol}: {label}" for name, label in PROTOCOL_COLUMNS}
    return [(name, labels[name]) for name in comparison["measures"]]


def _text(value: Mapping[str, Any] | None) -> str:
    """A measure as mean [interval]; blank where no seed has a number (a recovery whose
    removal dropped V by less than MIN_DROP in every seed)."""
    return "" if value is None or value["mean"] is None else as_text(value)


def comparison_frame(comparison: Mapping[str, Any]) -> pd.DataFrame:
    """One row per cell: its grid values, then each column's mean [95% interval]."""
    shown = columns(comparison)
    rows = []
    for cell in comparison["cells"].values():
        values = [value_text(v) for v in cell["settings"].values()]
        rows.append(values + [_text(cell["measures"].get(name)) for name, _ in shown])
    return pd.DataFrame(rows, columns=[*comparison["grid"], *(label for _, label in shown)])


def caption(comparison: Mapping[str, Any]) -> str:
    """What the numbers are, and when two rows ask the same questions."""
    seeds = comparison["seeds"]
    text = (
        f"Seeds are the unit: mean [95% t-interval] across {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}). Accuracy is 4-way multiple choice (chance 0.25). A "
        f"blank recovery means the removal dropped V by less than {MIN_DROP:g} (MIN_DROP) in "
        "every seed, so the share of the drop recovered is undefined there; 'n/a in k of n "
        "seeds' counts the seeds where it was."
    )
    groups = comparison["split_groups"]
    if len(groups) == 1 and len(groups[0]) > 1:
        text += (
            " Every cell splits a seed's facts into the same T and V (the split depends on the "
            "seed, held_out and the fact pool only): the rows ask the same questions, seed by "
            "seed."
        )
    elif any(len(group) > 1 for group in groups):
        text += (
            " Cells with the same held_out (and fact pool) split a seed's facts into the same "
            "T and V, so ask the same questions seed by seed."
        )
    return text


def _shared_text(comparison: Mapping[str, Any]) -> str:
    settings = comparison["settings"]
    cells = len(comparison["cells"])
    said = [
        f"{settings[key]}"
        for key in ("model", "forget_relation")
        if key in settings  # a grid axis is said per row
    ]
    retraining = (
        f"{settings['steps']} retraining steps at learning rate {settings['learning_rate']:g}"
        if "steps" in settings and "learning_rate" in settings
        else "retraining as each row says"
    )
    return (
        f"{cells} facts studies{' of ' + ', '.join(said) if said else ''}, one per cell of the "
        f"grid {', '.join(comparison['grid'])}, each with {retraining} under the protocols "
        f"{', '.join(settings['protocols'])}; every other setting is shared."
    )


def comparison_page(comparison: Mapping[str, Any]) -> HtmlPage:
    """The page of a ``comparison.json``."""
    page = HtmlPage("Facts: removals side by side", generator=GENERATOR)
    page.paragraph(_shared_text(comparison))
    page.table(comparison_frame(comparison), caption=caption(comparison), index=False)
    page.heading("Each cell's study")
    links = "".join(
        f'<li><a href="{html.escape(name, quote=True)}/report.html">{html.escape(name)}</a></li>'
        for name in comparison["cells"]
    )
    page.raw(f"<ul>{links}</ul>")
    return page


def write_comparison_report(root: str | Path, comparison: Mapping[str, Any]) -> Path:
    path = Path(root) / "comparison.html"
    atomic_write_text(path, comparison_page(comparison).to_html())
    return path


def comparison_text(comparison: Mapping[str, Any]) -> str:
    """A short table for the terminal: each cell's means of the removal's V and cost and of
    each protocol's net recovery ('-' where undefined); the intervals are on the page."""
    keep = ["removal_v", "removal_drop_retain", "removal_general_damage"]
    keep += [f"{p}_removal_recovered_net" for p in comparison["settings"]["protocols"]]
    shown = [(name, label) for name, label in columns(comparison) if name in keep]
    header = ["cell", *(label for _, label in shown)]
    rows = [header]
    for name, cell in comparison["cells"].items():
        means = [(cell["measures"].get(measure) or {}).get("mean") for measure, _ in shown]
        rows.append([name, *("-" if m is None else number_text(m) for m in means)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
