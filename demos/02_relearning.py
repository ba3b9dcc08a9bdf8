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
# # Relearning through the Python API
#
# The whole experiment in one call, on a small schedule: fine-tune the embedded model for NER,
# rank its neurons for LOC, hold the top 10% at zero, retrain in two short stages, and do the
# same with as many random neurons per layer (the paired control: same batches, same order,
# same dropout). Then the recovery curves and where the concept went, plotted inline. About
# 1.5 minutes on two CPU cores, offline; the default run (`neuroplastic run`) is the same with
# a longer schedule.

# %%
import os
import tempfile

from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.layers import fixed_population, layer_saliency, relocation
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
OUT = os.environ.get("NP_DEMO_OUT") or tempfile.mkdtemp(prefix="neuroplastic-relearning-")
REPORT = os.environ.get("NP_DEMO_REPORT", "1") == "1"

# %% [markdown]
# ## Run it
#
# `ExperimentConfig` holds every setting (saved as `config.json` in the run directory); the
# run writes its results as it goes, so rerunning with the same directory resumes.

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
    # evaluated at the default dense grid: every step, then log-spaced, in the first stage
    learning_rate=2e-4,
    top_k_tokens=10,
)
summary = run_experiment(config, OUT, progress=False)
run = RunDir(OUT)
print(f"run directory: {OUT}")

# %% [markdown]
# ## Recovery
#
# LOC F1 of each arm against retraining steps (0 = right after pruning; the base model's score
# sits at step 0 too, before pruning).

# %%
import plotly.graph_objects as go  # noqa: E402  (plots need the [report] extra)

curves = recovery_curves(run.metrics())
loc = curves[curves["entity"] == "LOC"]
recovery = go.Figure(
    [
        go.Scatter(x=rows["step"], y=rows["value"], mode="lines+markers", name=f"{arm} arm")
        for arm, rows in loc.groupby("arm", sort=False)
    ],
    layout=go.Layout(
        title="LOC F1 while retraining with the neurons held at zero",
        xaxis_title="retraining step",
        yaxis_title="LOC F1",
        yaxis_range=[0, 1],
    ),
)
show(recovery)
stages = {arm: data["stages"] for arm, data in summary["arms"].items()}
for arm, entries in stages.items():
    print(
        f"{arm:>7} arm, LOC F1: " + ", ".join(f"{e['stage']} {e['f1']['LOC']:.3f}" for e in entries)
    )

# %% [markdown]
# ## Where did the concept go?
#
# Per layer and stage, the mean saliency for LOC of the live neurons (1 = most salient; the
# held neurons have none), and the saliency-weighted mean layer of the top 1%. Removing the top
# tier changes which neurons are "the top 1%" with no training at all, so movement is read on
# one fixed population (alive at every stage, outside the held set), from the pruned stage on;
# the removal's own shift (base to pruned) is a separate number. A falling value means the
# concept moved to earlier layers. One run is one sample: `neuroplastic sweep` repeats it over
# seeds for intervals.

# %%
concept_arm = ArmRun.load(run, "concept")
rankings = concept_arm.rankings()
population = fixed_population(rankings, concept_arm.ablated)
saliency = layer_saliency(rankings, top=0.01, population=population)
moved = relocation(rankings, concept_arm.ablated, top=0.01)
depth = moved.depth
print(
    f"relocation while retraining ({moved.start} -> {moved.end}, {moved.n_population} neurons): "
    f"{moved.shift:+.2f} layers; shift at the removal alone ({moved.first} -> {moved.start}): "
    f"{moved.removal_shift:+.2f} layers"
)
where = go.Figure(
    [
        go.Scatter(x=rows["layer"], y=rows["mean"], mode="lines+markers", name=stage)
        for stage, rows in saliency.groupby("stage", sort=False)
    ],
    layout=go.Layout(
        title="Mean LOC saliency of the live neurons, per layer",
        xaxis_title="layer",
        yaxis_title="mean saliency",
    ),
)
show(where)
show(saliency.pivot(index="layer", columns="stage", values="n_alive")[list(rankings)])
show(depth)

# %% [markdown]
# ## The whole report, inline
#
# The run's report (`neuroplastic report DIR` writes it as `report.html`) displays in the
# notebook as an isolated frame, offline.

# %%
if REPORT:
    from neuroplastic.report.run_report import build_report

    report = build_report(run)
    show(report)
