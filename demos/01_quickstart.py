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
# # Quickstart: find the neurons for place names, switch them off, switch them back on
#
# Offline, on the embedded model (all-MiniLM-L6-v2, 6 layers x 1536 MLP neurons) and the
# synthetic NER corpus; about a minute on two CPU cores. Opened as a notebook (VS Code, or
# JupyterLab with jupytext) the tables and neuron views display inline, with no network;
# `python demos/01_quickstart.py` prints the same results as text.
#
# 1. give the model a tagging head and fine-tune it briefly, so that it tags place names (LOC);
# 2. rank its MLP neurons for LOC and look at the top ones' top tokens;
# 3. ablate the top 5% inside a `with` block: one sentence's tags and LOC F1, with and without;
# 4. check that the hooks are gone and the model is the one we started with.

# %%
import os

import torch

from neuroplastic.api import count_hooks, tag_sentence
from neuroplastic.core.ablation import ablate
from neuroplastic.core.models import load_model
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.core.training import TokenClassifier, TrainConfig, evaluate, tagging_loss, train
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.report.views import neuron_view, ranking_table, show

# The demo's settings; tests/project/test_demos.py shrinks them through these environment variables.
MODEL = os.environ.get("NP_DEMO_MODEL", "embedded")
TRAIN_SENTENCES = int(os.environ.get("NP_DEMO_TRAIN_SENTENCES", "1000"))
SENTENCES = int(os.environ.get("NP_DEMO_SENTENCES", "200"))  # validation, and probe
TRAIN_STEPS = int(os.environ.get("NP_DEMO_TRAIN_STEPS", "60"))
FRACTION = float(os.environ.get("NP_DEMO_FRACTION", "0.05"))
BATCH_SIZE = int(os.environ.get("NP_DEMO_BATCH_SIZE", "16"))

# %% [markdown]
# ## A model that tags place names
#
# Any TransformerLens model with `blocks.{l}.mlp.hook_post` works (`load_model("gpt2")` with
# network). The corpus has three splits with disjoint names: training sentences, *probe*
# sentences to rank neurons on, and validation sentences to measure F1 on.

# %%
model = load_model(MODEL)
corpus = load_corpus(n_train=TRAIN_SENTENCES, n_validation=SENTENCES, n_probe=SENTENCES, seed=0)
train_data, probe, validation = (
    encode_split(corpus, model.tokenizer, split, max_length=48)
    for split in ("train", "probe", "validation")
)
print(
    f"{MODEL}: {model.cfg.n_layers} layers x {model.cfg.d_mlp} MLP neurons; "
    f"{len(train_data)} training, {len(probe)} probe, {len(validation)} validation sentences"
)

# %%
torch.manual_seed(0)  # the head's initialisation
tagger = TokenClassifier(model, len(train_data.tag_names))  # a linear head on the last layer
losses = train(
    tagger,
    tagging_loss,
    train_data,
    TRAIN_STEPS,
    TrainConfig(learning_rate=2e-4, batch_size=BATCH_SIZE),
    seed=0,
    progress=False,
)
print(f"fine-tuned {TRAIN_STEPS} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}")

# %% [markdown]
# ## Rank the neurons for LOC
#
# One streaming pass over the probe sentences collects every neuron's mean activation per label
# and its top activating tokens. `selectivity` ranks the neurons that fire more on LOC tokens
# than on every other label first (the paper's `probeless` also ranks neurons that separate any
# entity from `O`).

# %%
stats = collect_stats(model, probe, top_k=10, progress=False)
ranking = Ranking.from_stats(stats, "LOC", method="selectivity")
neurons = NeuronSet.top_fraction(ranking, FRACTION)
table = ranking_table(ranking, stats, model.tokenizer, n=10)
show(table)
print(f"{neurons.description}; per layer {dict(sorted(neurons.per_layer_counts().items()))}")

# %% [markdown]
# The three most salient neurons in their top sentences (pick a neuron in the first view's menu;
# each token is coloured by its activation).

# %%
top3 = NeuronSet.top_k(ranking, 3)
view = neuron_view(
    model, probe, top3, stats=stats, max_sentences=3, title="The 3 most salient LOC neurons"
)
show(view)

# %% [markdown]
# ## Ablate them in a `with` block
#
# Inside the block the neurons' activations are exactly zero on every forward pass (one hook on
# `blocks.{l}.mlp.hook_post` per layer); on exit the hooks are removed. The first validation
# sentence with a place name shows what changes.

# %%
index = next(i for i, s in enumerate(validation.sentences) if "B-LOC" in s.tags)
hooks_before = count_hooks(model)  # BERT bridges hold a few permanent hooks of their own
base_f1 = evaluate(tagger, validation, "ner", "LOC", progress=False).scores["f1"]
tags_before = tag_sentence(tagger, validation, index)
with ablate(model, neurons) as removal:
    ablation_hooks_inside = count_hooks(model, ablations_only=True)
    tags_ablated = tag_sentence(tagger, validation, index)
    ablated_f1 = evaluate(tagger, validation, "ner", "LOC", progress=False).scores["f1"]
ablation_hooks_after = count_hooks(model, ablations_only=True)
hooks_after = count_hooks(model)

sentence_tags = tags_before.rename(columns={"predicted": "base"}).assign(
    ablated=tags_ablated["predicted"]
)
show(sentence_tags)
f1_table = {
    name: {"base": base_f1[name], "ablated": ablated_f1[name]} for name in ("LOC", "overall")
}
for name, scores in f1_table.items():
    print(f"{name} F1: {scores['base']:.3f} -> {scores['ablated']:.3f} with {len(neurons)} ablated")

# %% [markdown]
# ## The hooks are gone
#
# Outside the block the model holds no ablation hook, only the hooks it held before, and tags
# the sentence exactly as before.

# %%
tags_after = tag_sentence(tagger, validation, index)
print(
    f"ablation hooks: {ablation_hooks_inside} inside the block (one per layer touched), "
    f"{ablation_hooks_after} after; all hooks: {hooks_before} before, {hooks_after} after"
)
print(removal)
assert ablation_hooks_after == 0 and hooks_after == hooks_before
assert tags_after.equals(tags_before)
