"""The run report's sections on neurons: saliency per layer and heatmaps, the neurons where the
concept reappeared (with their CircuitsVis views), the pruned and primed neurons, the
predictors' scores against what happened, and polysemantic neurons."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from neuroplastic.analysis.arm_analysis import ArmAnalysis
from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.predictor_labels import DESCRIPTIONS, TRUTHS
from neuroplastic.report import figures
from neuroplastic.report.html import HtmlPage
from neuroplastic.report.style import fmt
from neuroplastic.report.views import add_side_by_side, examples_from_top_k
from neuroplastic.store.manifest import CorruptFile
from neuroplastic.store.rundir import RunDir
from neuroplastic.store.summary import Summary


def saliency_section(page: HtmlPage, analyses: dict[str, ArmAnalysis], n_top: int) -> None:
    page.heading("Saliency per layer")
    page.paragraph(
        "Left: mean saliency of each layer's live neurons, per stage (ablated neurons have no "
        "saliency and are left out; hover for how many were alive). With no concept at all, "
        f"every layer would sit near 0.5. Right: which layers hold the top {n_top} most salient "
        "neurons of one fixed population per arm (alive at every stage, outside the arm's "
        "removed set), so that every stage's top set is drawn from the same neurons. Below: the "
        "saliency-weighted mean layer of those top neurons (solid), and of each stage's own top "
        "set among all live neurons (dotted). Between base and pruned nothing is trained: the "
        "dotted line's step there is what removing the top tier does to 'the top neurons' by "
        "itself, not movement. Does the concept move to earlier layers while retraining, as Lo "
        "et al. report? Read the solid line from pruned on, against the random arm; whether a "
        "shift exceeds the spread between seeds is for `neuroplastic sweep` to say."
    )
    arms = list(analyses)
    page.plotly(figures.layer_saliency(analyses, n_top))
    n_layers = analyses[arms[0]].run.stages[analyses[arms[0]].run.first].ranking.n_layers
    page.plotly(figures.concept_depth(analyses, n_top, n_layers), height="330px")
    with page.details("Saliency per layer, as a table"):
        for arm in arms:
            page.table(analyses[arm].layer_saliency, caption=f"{arm} arm", index=False)
            page.table(analyses[arm].depth, caption=f"{arm} arm: depth of the concept", index=False)


def heatmaps_section(page: HtmlPage, analyses: dict[str, ArmAnalysis]) -> None:
    page.heading("Saliency of every neuron")
    page.paragraph(
        "One row per layer, one column per neuron, one panel per stage; the random arm on the "
        "right. Within a layer, neurons are sorted by their saliency at the first stage (hover "
        "for the neuron's index), so the first panel is a smooth gradient and later panels show "
        "which neurons lost or gained the concept. Ablated (dead) neurons have no saliency: "
        "they are drawn grey (masked), not as 0."
    )
    arms = list(analyses)
    stages = list(dict.fromkeys(s for a in arms for s in analyses[a].run.stage_names))
    fig = figures.saliency_heatmaps(analyses, stages)
    page.plotly(fig, height=f"{figures.heatmaps_height(stages)}px")


def _tokens(tokens: Sequence[str], n: int = 8) -> str:
    return " · ".join(str(t).strip() or repr(t) for t in list(tokens)[:n])


def stored_activations_section(
    run: RunDir,
) -> Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]]:
    """``(arm, stage) ->`` the whole-sentence activations the run stored for its neuron views,
    read once each; a file that cannot be read gives none (its views show the top tokens only,
    and say so)."""
    cache: dict[tuple[str, str], Mapping[tuple[int, int, int], np.ndarray]] = {}

    def stored(arm: str, stage: str) -> Mapping[tuple[int, int, int], np.ndarray]:
        if (arm, stage) not in cache:
            try:
                cache[arm, stage] = run.sentence_activations(arm, stage)
            except CorruptFile:
                cache[arm, stage] = {}
        return cache[arm, stage]

    return stored


def _before_after(
    page: HtmlPage,
    data: ArmRun,
    sentences: list[list[str]],
    layer: int,
    neuron: int,
    summary: str,
    stored: Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]] | None = None,
) -> None:
    """One neuron's view at the arm's first and last stage; ``stored(arm, stage)``: the
    whole-sentence activations the run stored for its views (every token coloured)."""
    with page.details(summary):
        if not sentences:
            page.paragraph("No sentences stored in the run directory (sentences.json).")
            return
        columns = [
            examples_from_top_k(
                data.stages[stage].top_tokens, sentences, layer, neuron,
                activations=stored(data.arm, stage) if stored is not None else None,
            )
            for stage in (data.first, data.last)
        ]  # fmt: skip
        add_side_by_side(
            page,
            columns,
            [f"L{layer}:N{neuron} at {data.first}", f"L{layer}:N{neuron} at {data.last}"],
        )


def reappeared_section(
    page: HtmlPage,
    analyses: dict[str, ArmAnalysis],
    sentences: list[list[str]],
    n_views: int,
    similarity_note: str,
    stored: Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]] | None = None,
) -> None:
    page.heading("Where the concept reappeared")
    page.paragraph(
        "The neurons outside the ablated set that gained most saliency from the pruned stage to "
        "the last, with their top activating tokens before pruning and at the end. "
        + similarity_note
    )
    for i, (arm, analysis) in enumerate(analyses.items()):
        data, frame = analysis.run, analysis.reappearance
        table = pd.DataFrame(
            {
                "neuron": [
                    f"L{a}:N{b}" for a, b in zip(frame["layer"], frame["neuron"], strict=True)
                ],
                f"saliency {data.start}": frame["saliency_start"],
                f"saliency {data.last}": frame["saliency_end"],
                "gain": frame["gain"],
                f"{analysis.run.concept} share before": frame["concept_share_base"],
                f"{analysis.run.concept} share after": frame["concept_share_end"],
                "similarity before/after": frame["similarity"],
                f"top tokens at {data.first}": frame["tokens_base"].map(_tokens),
                f"top tokens at {data.last}": frame["tokens_end"].map(_tokens),
            }
        )
        with page.details(f"{arm} arm: {len(table)} neurons", open=i == 0):
            page.table(table, index=False, float_format="{:.3f}")
            for row in frame.head(n_views).itertuples(index=False):
                _before_after(
                    page,
                    data,
                    sentences,
                    int(row.layer),
                    int(row.neuron),
                    f"L{row.layer}:N{row.neuron}: saliency {row.saliency_start:.2f} → "
                    f"{row.saliency_end:.2f}; now {_tokens(row.tokens_end, 5)}",
                    stored,
                )


def pruned_section(
    page: HtmlPage, analyses: dict[str, ArmAnalysis], config: dict[str, Any]
) -> None:
    page.heading("The ablated neurons")
    page.paragraph(
        "The ablated neurons at every stage: how many are alive, and for those alive their mean "
        "saliency and how similar their top tokens are to their own top tokens before pruning. "
        "In hold mode they stay dead (activation 0: no saliency, no similarity, '–'); in "
        "regrow mode they may come back, with the old meaning or a new one. This run: "
        f"{config['mode']} mode."
    )
    rows = []
    for arm, analysis in analyses.items():
        for r in analysis.pruned.stages.itertuples(index=False):
            rows.append(
                {
                    "arm": arm,
                    "stage": r.stage,
                    "alive": f"{r.n_alive} of {r.n}",
                    "mean saliency (alive)": fmt(r.saliency_mean, ".3f"),
                    "mean similarity to own base tokens (alive)": fmt(r.similarity_mean, ".3f"),
                    f"{analysis.run.concept} share of top tokens (alive)": fmt(
                        r.concept_share_mean, ".0%"
                    ),
                }
            )
    page.table(pd.DataFrame(rows), index=False)


def primed_section(page: HtmlPage, analyses: dict[str, ArmAnalysis], similarity_note: str) -> None:
    page.heading("Primed neurons")
    primed = {arm: a.primed for arm, a in analyses.items() if a.primed is not None}
    if not primed:
        page.paragraph("Not computed: " + similarity_note)
        return
    first = next(iter(primed.values()))
    page.paragraph(
        "Does a neuron's similarity to the concept before pruning (its top tokens against the "
        "tokens labelled with the concept) predict how much saliency it gains from "
        f"{first.start} to {first.end}? Spearman's ρ over the neurons outside the ablated set "
        "that are alive at every stage compared: a description of this run, not a test (no "
        "p-value or interval is computed over neurons; seeds give the spread). A positive ρ in "
        "the concept arm says the concept came back in neurons already near it. Neurons already "
        "salient at the start have little room to gain, so the second row of each arm keeps "
        "only those with saliency below 0.5 there. The gain is measured from the saliency at "
        "the start, and similarity goes with that saliency too, so part of ρ is mechanical; "
        "the partial ρ of similarity with the saliency at the end, given the saliency at the "
        "start, takes that part out. " + similarity_note
    )
    rows = []
    for arm, analysis in analyses.items():
        for neurons, p in (
            ("all", analysis.primed),
            ("saliency < 0.5 at start", analysis.primed_unsalient),
        ):
            if p is not None:
                rows.append(
                    {
                        "arm": arm,
                        "neurons": neurons,
                        "rho": p.rho,
                        "rho with saliency at start": p.rho_with_start,
                        "partial rho given start": p.partial_rho,
                        "n": p.n,
                    }
                )
    page.table(pd.DataFrame(rows), index=False, float_format="{:+.3f}")
    fig = figures.primed_scatter(primed)
    page.plotly(fig, height="360px")


def prediction_section(page: HtmlPage, summary: Summary | None, concept: str) -> None:
    """Each predictor against each ground truth, as the run's summary recorded them (a run
    made before predictions existed has none: no section)."""
    rows = summary.prediction if summary else None
    if not rows:
        return
    page.heading("Predicting the new home")
    page.paragraph(
        f"At the pruned stage, before any retraining, every surviving neuron of the concept arm "
        f"was scored by each predictor below; once retraining was done, the scores were checked "
        f"against the neurons that took {concept} over. ROC AUC: the chance that such a neuron "
        "scores above one that did not (chance: 0.5). Precision at k: the share of them among "
        "the k best-scored neurons, k their number (chance: their share of all candidates, the "
        "base rate). Candidates are the neurons alive at both stages in the concept arm and "
        "its control and in neither removed set, one population for both arms, with saliency "
        "re-ranked among them. "
        "This is one seed's description, not an estimate: a handful of positive neurons makes "
        "these numbers coarse, and their spread comes from seeds (`neuroplastic sweep`). The "
        "probe sentences are split in two halves by a seeded hash: the predictors read one, "
        "the ground truths the other, so no predictor shares a truth's sampling noise."
    )
    frame = pd.DataFrame(rows)
    _causal_table(page, summary.causal or {}, concept)
    with page.details("What each predictor and ground truth is"):
        names = [*frame["predictor"].unique(), *TRUTHS]
        page.table(
            pd.DataFrame({"meaning": [DESCRIPTIONS.get(n, "") for n in names]}, index=names),
            float_format=None,
        )
    for (arm, truth), group in frame.groupby(["arm", "truth"], sort=False):
        first = group.iloc[0]
        n_positive, n_candidates = int(first["n_positive"]), int(first["n_candidates"])
        what = f"{arm} arm, truth '{truth}' ({DESCRIPTIONS.get(truth, truth)})"
        if n_positive == 0:
            page.paragraph(f"{what}: no neuron qualified, so no predictor can be scored.")
            continue
        table = pd.DataFrame(
            {
                "predictor": group["predictor"],
                "ROC AUC": group["auc"].map(lambda v: fmt(v, ".3f")),
                f"precision at {int(first['k'])}": group["precision_at_k"].map(
                    lambda v: fmt(v, ".3f")
                ),
                "unscored": group["n_unscored"] if "n_unscored" in group else 0,
            }
        )
        page.table(
            table,
            caption=f"{what}: {n_positive} of {n_candidates} candidates; chance: AUC 0.5, "
            f"precision {first['base_rate']:.3f}",
            index=False,
            float_format=None,
        )


def _causal_table(page: HtmlPage, causal: dict[str, Any], concept: str) -> None:
    """What ablating each predictor's picks costs the retrained model
    (neuroplastic.analysis.causal)."""
    for arm, record in causal.items():
        ner = record["task"] == "ner"
        what = f"{concept} F1 lost" if ner else f"{concept} next-token loss gained"
        score = f"{concept} F1 {record['score']:.3f}" if ner else f"loss {record['score']:.3f}"
        floor = record["lost"].get("matched_random")
        table = pd.DataFrame(
            {
                "set ablated": list(record["lost"]),
                what: [fmt(v, "+.3f") for v in record["lost"].values()],
                "beyond random survivors": [
                    fmt(None if v is None or floor is None else v - floor, "+.3f")
                    for v in record["lost"].values()
                ],
            }
        )
        others = record.get("others_lost")
        if others:  # is the set the concept's, or one every type leans on?
            table["other types' F1 lost, mean"] = [
                fmt(float(np.mean(list(others[n].values()))) if others.get(n) else None, "+.3f")
                for n in record["lost"]
            ]
        page.table(
            table,
            caption=f"Causal truth, {arm} arm: in the retrained model ({score}, its removal "
            f"held), {record['k']} more surviving neurons ablated at a time: each predictor's "
            "best-scored, the realised top gainers (hindsight), the last stage's most salient, "
            "and random survivors with the gainers' count per layer (the floor). Scored on the "
            "validation sentences, which neither predictors nor rankings read; one seed",
            index=False,
            float_format=None,
        )


def polysemantic_section(
    page: HtmlPage,
    analyses: dict[str, ArmAnalysis],
    sentences: list[list[str]],
    n_neurons: int,
    n_views: int,
    stored: Callable[[str, str], Mapping[tuple[int, int, int], np.ndarray]] | None = None,
) -> None:
    page.heading("Polysemantic neurons")
    any_analysis = next(iter(analyses.values()))
    poly = any_analysis.polysemanticity
    page.paragraph(
        f"A neuron is {poly.definition()}. 'Newly polysemantic' ones were not at the first "
        "stage; demo 03 shows the ones mixed with another entity type. Every "
        "stage of every arm is counted over one population, the "
        f"{poly.n_population} neurons alive at every stage of every arm and outside every "
        "arm's removed set, so a change in the count is a change of behaviour, not of the "
        "denominator, and the control arm's count (churn from retraining alone) is the "
        "yardstick for the concept arm's."
    )
    frames = []
    for arm, analysis in analyses.items():
        frame = analysis.polysemanticity.counts.copy()
        frame.insert(0, "arm", arm)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True).rename(columns=poly.HEADERS)
    page.table(table, index=False, float_format="{:.3f}")
    for i, (arm, analysis) in enumerate(analyses.items()):
        data = analysis.run
        examples = analysis.polysemanticity.examples(data.last, n_neurons)
        with page.details(
            f"{arm} arm: polysemantic neurons at {data.last} ({len(examples)} shown)", open=i == 0
        ):
            if examples.empty:
                page.paragraph("None.")
                continue
            page.table(
                pd.DataFrame(
                    {
                        "neuron": [
                            f"L{a}:N{b}"
                            for a, b in zip(examples["layer"], examples["neuron"], strict=True)
                        ],
                        f"{poly.concept} share": examples["concept_share"],
                        "mixed with": examples["mixed_with"],
                        "labels of its top tokens": examples["labels"].map(
                            lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
                        ),
                        "newly polysemantic": examples["new"],
                        "top tokens": examples["tokens"].map(_tokens),
                    }
                ),
                index=False,
                float_format="{:.2f}",
            )
            for row in examples.head(n_views).itertuples(index=False):
                _before_after(
                    page,
                    data,
                    sentences,
                    int(row.layer),
                    int(row.neuron),
                    f"L{row.layer}:N{row.neuron}: {row.concept_share:.0%} "
                    f"{poly.concept}, mixed with {row.mixed_with}"
                    f"{' (newly polysemantic)' if row.new else ''}; "
                    f"{_tokens(row.tokens, 5)}",
                    stored,
                )
