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
# # Polysemantic neurons: place names and something else
#
# A neuron is *polysemantic* for LOC here when its dataset-wide top activating tokens mix
# place names with tokens of another entity type (PER, ORG or MISC). The paper reports that
# neurons become polysemantic this way when a removed concept comes back; this demo finds such
# neurons in the embedded model as it is, and shows them side by side with CircuitsVis.
# Offline, about 20 seconds on two CPU cores.

# %%
import os

import pandas as pd

from neuroplastic.analysis.polysemantic import polysemanticity
from neuroplastic.core.models import load_model
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.report.views import examples_from_model, show, side_by_side

# The demo's settings; tests/project/test_demos.py shrinks them through these environment variables.
MODEL = os.environ.get("NP_DEMO_MODEL", "embedded")
SENTENCES = int(os.environ.get("NP_DEMO_SENTENCES", "400"))
TOP_K = int(os.environ.get("NP_DEMO_TOP_K", "20"))  # top activating tokens kept per neuron
N_SHOWN = int(os.environ.get("NP_DEMO_N_SHOWN", "3"))
CONCEPT = "LOC"

# %% [markdown]
# ## Every neuron's top tokens, with their labels
#
# One streaming pass keeps, for every MLP neuron, its `TOP_K` most activating tokens over the
# sentences and the entity label of each.

# %%
model = load_model(MODEL)
corpus = load_corpus(n_train=10, n_validation=10, n_probe=SENTENCES, seed=0)
data = encode_split(corpus, model.tokenizer, "probe", max_length=48)
stats = collect_stats(model, data, top_k=TOP_K, progress=False)
print(f"{stats.n_layers} layers x {stats.d_mlp} neurons, top {stats.k} tokens each")

# %% [markdown]
# ## Neurons that respond to LOC and to another label
#
# The definition the run's report counts (`neuroplastic.analysis.polysemantic.polysemanticity`): a
# neuron is polysemantic for LOC when LOC holds between twice its share of all tokens and one minus
# that share of the neuron's top tokens; what it is mixed with is the most common other label
# among them. Here, the ones mixed with another entity type (PER, ORG or MISC) rather than
# with the outside label O; the most even mixes first.

# %%
poly = polysemanticity({"model": stats}, CONCEPT)
print(f"A neuron is {poly.definition()}.")
mixed = poly.neurons
counted = mixed["labels"]
polysemantic = pd.DataFrame(
    {
        "layer": mixed["layer"],
        "neuron": mixed["neuron"],
        CONCEPT: [labels.get(CONCEPT, 0) for labels in counted],
        "other_label": mixed["mixed_with"],
        "other": [labels.get(o, 0) for labels, o in zip(counted, mixed["mixed_with"], strict=True)],
        "O": [labels.get("O", 0) for labels in counted],
    },
    columns=["layer", "neuron", CONCEPT, "other_label", "other", "O"],
)
polysemantic = polysemantic[polysemantic["other_label"] != "O"].copy()
# The most even mixes first, then those with the fewest top tokens outside any entity.
polysemantic["evenness"] = -(polysemantic[CONCEPT] - polysemantic["other"]).abs()
polysemantic = (
    polysemantic.sort_values(
        ["evenness", "O", "layer", "neuron"], ascending=[False, True, True, True], kind="stable"
    )
    .drop(columns="evenness")
    .reset_index(drop=True)
)
counts = poly.counts.iloc[0]
print(
    f"{counts['n_polysemantic']} of {counts['n_population']} live neurons are polysemantic for "
    f"{CONCEPT}; {len(polysemantic)} of them mixed with another entity type"
)
show(polysemantic.groupby("other_label").size().rename("neurons").to_frame())
show(polysemantic.head(10))

# %% [markdown]
# ## Side by side
#
# The most evenly mixed neurons in their top sentences, every token coloured by the neuron's
# activation (the model is run again on those sentences).

# %%
chosen = [tuple(pair) for pair in polysemantic[["layer", "neuron"]].head(N_SHOWN).to_numpy()]
examples = examples_from_model(
    model, data, NeuronSet.of(stats.n_layers, stats.d_mlp, chosen), stats, max_sentences=4
)
by_neuron = {(e.layer, e.neuron): e for e in examples}
headings = [
    f"L{layer}:N{neuron}: {n_concept} {CONCEPT} and {n_other} {other} of {stats.k}"
    for layer, neuron, n_concept, other, n_other in polysemantic.head(N_SHOWN)[
        ["layer", "neuron", CONCEPT, "other_label", "other"]
    ].itertuples(index=False)
]
view = side_by_side([by_neuron[n] for n in chosen], headings, title="Polysemantic LOC neurons")
show(view)
