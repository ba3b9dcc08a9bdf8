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
import torch

from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.models import load_model
from neuroplastic.neurons import NeuronSet
from neuroplastic.ranking import alive_neurons
from neuroplastic.stats import collect_stats
from neuroplastic.views import examples_from_model, show, side_by_side

# The demo's settings; tests/test_demos.py shrinks them through these environment variables.
MODEL = os.environ.get("NP_DEMO_MODEL", "embedded")
SENTENCES = int(os.environ.get("NP_DEMO_SENTENCES", "400"))
TOP_K = int(os.environ.get("NP_DEMO_TOP_K", "20"))  # top activating tokens kept per neuron
SHARE = float(os.environ.get("NP_DEMO_SHARE", "0.25"))  # least share of each of the two labels
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
# Count the labels of each neuron's top tokens; keep the live neurons where LOC and one other
# entity type each hold at least `SHARE` of them. The most even mixes come first.

# %%
# [layer, neuron, label]: how many of each neuron's top tokens carry each label
counts = torch.nn.functional.one_hot(stats.top_label, len(stats.label_names)).sum(-2)
concept = stats.label_index(CONCEPT)
others = [i for i, name in enumerate(stats.label_names) if name not in (CONCEPT, "O")]
candidates = alive_neurons(stats) & (counts[:, :, concept] >= SHARE * stats.k)
rows = []
for layer, neuron in candidates.nonzero().tolist():
    mix = counts[layer, neuron]
    other = max(others, key=lambda i: int(mix[i]))
    if mix[other] >= SHARE * stats.k:
        rows.append(
            {
                "layer": layer,
                "neuron": neuron,
                CONCEPT: int(mix[concept]),
                "other_label": stats.label_names[other],
                "other": int(mix[other]),
                "O": int(mix[stats.label_index("O")]),
            }
        )
polysemantic = pd.DataFrame(rows, columns=["layer", "neuron", CONCEPT, "other_label", "other", "O"])
# The most even mixes first, then those with the fewest top tokens outside any entity.
polysemantic["evenness"] = -(polysemantic[CONCEPT] - polysemantic["other"]).abs()
polysemantic = (
    polysemantic.sort_values(
        ["evenness", "O", "layer", "neuron"], ascending=[False, True, True, True], kind="stable"
    )
    .drop(columns="evenness")
    .reset_index(drop=True)
)
print(
    f"{len(polysemantic)} of {stats.n_layers * stats.d_mlp} neurons have at least "
    f"{SHARE:.0%} of their top {stats.k} tokens labelled {CONCEPT} and as many of another type"
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
