# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Three ways to remove a concept, one harness
#
# Zero-ablating the neurons most salient for LOC is one way to remove it. LEACE (Belrose et al.
# 2023) erases it linearly from the residual stream, so that no linear probe can tell the
# concept's tokens from the rest; projecting out its difference-of-means direction is a cruder
# cut of the same kind. Here each one is fitted on the same fine-tuned base model, held through
# the same short retraining (the same batches, order and dropout), and traced the same way: the
# recovery of LOC F1, and a linear probe per layer and stage that says where LOC is readable
# again. One seed and small settings, offline on the embedded model: a few minutes on two CPU
# cores. The README's table repeats this over seeds (`neuroplastic sweep --grid
# removal=neurons,leace,direction`).

# %%
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

from neuroplastic.analysis.scores import recovery_curves
from neuroplastic.config import ExperimentConfig
from neuroplastic.experiment.pipeline import run_experiment
from neuroplastic.report.views import show
from neuroplastic.store.rundir import RunDir

# The demo's settings; tests/project/test_demos.py shrinks them through these environment variables.
MODEL = os.environ.get("NP_DEMO_MODEL", "embedded")
TRAIN_SENTENCES = int(os.environ.get("NP_DEMO_TRAIN_SENTENCES", "800"))
SENTENCES = int(os.environ.get("NP_DEMO_SENTENCES", "120"))  # validation, and probe
BASE_STEPS = int(os.environ.get("NP_DEMO_BASE_STEPS", "50"))
STAGE_STEPS = int(os.environ.get("NP_DEMO_STAGE_STEPS", "10"))
OUT = Path(os.environ.get("NP_DEMO_OUT") or tempfile.mkdtemp(prefix="neuroplastic-removals-"))
REMOVALS = ("neurons", "leace", "direction")

# %% [markdown]
# ## One base, three removals
#
# The three runs differ in `removal` and nothing else. The first trains the base model and keeps
# its weights; the other two load them (`base_from`), so every removal starts from the very same
# model. Each run's random control removes as much, concept-blind: as many random neurons per
# layer for the neuron removal; a random orthogonal projection of the same rank at the same hook
# points for the two erasures.

# %%
config = ExperimentConfig(
    model=MODEL,
    concept="LOC",
    method="selectivity",
    fraction=0.1,
    train_sentences=TRAIN_SENTENCES,
    validation_sentences=SENTENCES,
    probe_sentences=SENTENCES,
    max_length=48,
    base_steps=BASE_STEPS,
    plateau_every=0,  # exactly BASE_STEPS steps of fine-tuning
    stages=2,
    stage_steps=STAGE_STEPS,
    learning_rate=2e-4,
    top_k_tokens=10,
)
summaries, runs = {}, {}
for removal in REMOVALS:
    out = OUT / removal
    summaries[removal] = run_experiment(
        replace(config, removal=removal),
        out,
        progress=False,
        base_from=[OUT / REMOVALS[0]] if removal != REMOVALS[0] else [],
        keep_base=removal == REMOVALS[0],
    )
    runs[removal] = RunDir(out)
    print(f"{removal:>9}: {summaries[removal]['arms']['concept'].get('removal', {}).get('what')}")

# %% [markdown]
# ## What each removal does at once
#
# LOC F1 at base and right after the removal (no training in between), beside the mean F1 of
# the other entity types, and the linear probe's AUC for LOC at the last layer: a logistic
# regression trained on the probe sentences' residual stream and scored on the validation
# tokens (0.5: not readable). LEACE's guarantee is about the last of these: with its eraser
# held, no linear probe beats the constant predictor on the distribution it was fitted on.

# %%
last_layer = str(
    max(int(k) for k in summaries["neurons"]["arms"]["concept"]["stages"][0]["readable"])
)
at_once = []
for removal, summary in summaries.items():
    for arm in ("concept", "random"):
        base, pruned = summary["arms"][arm]["stages"][:2]
        others = [k for k in base["f1"] if k not in ("overall", "LOC")]
        at_once.append(
            {
                "removal": removal,
                "arm": arm,
                "LOC F1 base": base["f1"]["LOC"],
                "LOC F1 removed": pruned["f1"]["LOC"],
                "others F1 removed - base": sum(pruned["f1"][k] - base["f1"][k] for k in others)
                / len(others),
                f"probe AUC, layer {last_layer}, base": base["readable"][last_layer],
                f"probe AUC, layer {last_layer}, removed": pruned["readable"][last_layer],
            }
        )
at_once = pd.DataFrame(at_once).set_index(["removal", "arm"])
show(at_once.round(3))

# %% [markdown]
# ## Recovery while the removal is held
#
# LOC F1 of each removal's concept arm against retraining steps (solid), and of its random
# control (dotted). One seed: the sweep gives intervals.

# %%
import plotly.graph_objects as go  # noqa: E402  (plots need the [report] extra)

COLORS = {"neurons": "#1f77b4", "leace": "#d62728", "direction": "#2ca02c"}
recovery = go.Figure(
    layout=go.Layout(
        title="LOC F1 while retraining with each removal held",
        xaxis_title="retraining step",
        yaxis_title="LOC F1",
        yaxis_range=[0, 1],
    )
)
curves = {}
for removal, run in runs.items():
    frame = recovery_curves(run.metrics())
    curves[removal] = frame[(frame["entity"] == "LOC") & (frame["step"] >= 0)]
    for arm, dash in (("concept", "solid"), ("random", "dot")):
        rows = curves[removal][curves[removal]["arm"] == arm]
        recovery.add_trace(
            go.Scatter(
                x=rows["step"], y=rows["value"], mode="lines+markers",
                name=f"{removal}, {arm} arm", line={"color": COLORS[removal], "dash": dash},
            )
        )  # fmt: skip
show(recovery)

# %% [markdown]
# ## Where LOC is readable again: the probe per layer and stage
#
# The tracer that works for every removal. Neuron saliency describes only a neuron removal;
# the probe asks of any removal whether retraining re-encodes the concept, and in which layer,
# even before the tagging head uses it again.

# %%
probe = pd.DataFrame(
    [
        {
            "removal": removal,
            "stage": entry["stage"],
            **{f"layer {k}": v for k, v in entry["readable"].items()},
        }
        for removal, summary in summaries.items()
        for entry in summary["arms"]["concept"]["stages"]
    ]
).set_index(["removal", "stage"])
show(probe.round(3))
