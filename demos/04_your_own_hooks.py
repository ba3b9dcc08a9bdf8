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
# # Bring your own hooks
#
# A `neuroplastic` ablation is a TransformerLens hook like any other: it composes with your own
# hooks in one forward pass. Here it runs together with a `run_with_cache` and an activation
# patch (the residual stream at a place name's position, taken from a clean run and put into a
# corrupted one), registered in either order: the results are identical. Offline, about
# 20 seconds on two CPU cores.

# %%
import os

import torch

from neuroplastic.api import count_hooks
from neuroplastic.core.ablation import ablate
from neuroplastic.core.models import load_model, mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.load import encode_split, load_corpus

# The demo's settings; tests/project/test_demos.py shrinks them through these environment variables.
MODEL = os.environ.get("NP_DEMO_MODEL", "embedded")
SENTENCES = int(os.environ.get("NP_DEMO_SENTENCES", "100"))
N_NEURONS = int(os.environ.get("NP_DEMO_N_NEURONS", "200"))

# %% [markdown]
# ## The neurons to ablate, and a sentence with a place name

# %%
model = load_model(MODEL)
corpus = load_corpus(n_train=10, n_validation=10, n_probe=SENTENCES, seed=0)
probe = encode_split(corpus, model.tokenizer, "probe", max_length=48)
stats = collect_stats(model, probe, top_k=5, progress=False)
neurons = NeuronSet.top_k(Ranking.from_stats(stats, "LOC", "selectivity"), N_NEURONS)

loc = probe.label_id("LOC")
index = next(i for i, e in enumerate(probe.encoded) if loc in e.concept_labels)
tokens = torch.tensor([probe.encoded[index].token_ids])  # one sentence: no padding
position = probe.encoded[index].concept_labels.index(loc)  # its first place-name token
corrupted = tokens.clone()
corrupted[0, position] = model.tokenizer.encode(" the", add_special_tokens=False)[-1]
print(" ".join(probe.token_strings(index)))
print(f"corrupted: token {position} ({probe.token_strings(index)[position]!r}) -> 'the'")

# %% [markdown]
# ## Your hooks: a cache and an activation patch
#
# Patch the residual stream after layer 0 at the place name's position with its value from the
# clean sentence. Cache every MLP output and residual stream (filter with a function: a string
# alias can cache a name twice).

# %%
PATCH_AT = "blocks.0.hook_resid_post"
_, clean_cache = model.run_with_cache(tokens, names_filter=lambda name: name == PATCH_AT)


def patch_place_name(activation: torch.Tensor, hook) -> torch.Tensor:
    """Your own hook: put the clean run's residual stream back at the place name."""
    activation[:, position] = clean_cache[PATCH_AT][:, position]
    return activation


def cached(name: str) -> bool:
    return name.endswith("mlp.hook_post") or name.endswith("hook_resid_post")


# %% [markdown]
# ## One forward pass, both orders
#
# The ablation's hooks sit on `blocks.{l}.mlp.hook_post`, the patch on the residual stream, and
# `run_with_cache` adds its caching hooks last, so the cache sees the ablated, patched model.

# %%
hooks_before = count_hooks(model)
with torch.no_grad():
    # ablation first, then your patch
    with ablate(model, neurons), model.hooks(fwd_hooks=[(PATCH_AT, patch_place_name)]):
        logits_ablation_first, cache_ablation_first = model.run_with_cache(
            corrupted, names_filter=cached
        )
    # your patch first, then the ablation
    with model.hooks(fwd_hooks=[(PATCH_AT, patch_place_name)]), ablate(model, neurons):
        logits_patch_first, cache_patch_first = model.run_with_cache(corrupted, names_filter=cached)
    # TransformerLens's own one-call form, inside the ablation
    with ablate(model, neurons):
        logits_run_with_hooks = model.run_with_hooks(
            corrupted, fwd_hooks=[(PATCH_AT, patch_place_name)]
        )
    # each intervention alone, for comparison
    with model.hooks(fwd_hooks=[(PATCH_AT, patch_place_name)]):
        logits_patch_only = model(corrupted)
    with ablate(model, neurons):
        logits_ablation_only = model(corrupted)
hooks_after = count_hooks(model)

same_logits = torch.equal(logits_ablation_first, logits_patch_first)
same_cache = sorted(cache_ablation_first.keys()) == sorted(cache_patch_first.keys()) and all(
    torch.equal(cache_ablation_first[name], cache_patch_first[name])
    for name in cache_ablation_first.keys()
)
ablated_max = max(
    float(cache_ablation_first[mlp_hook_name(layer)][..., indices].abs().max())
    for layer, indices in neurons.by_layer().items()
)
patched_error = float(
    (cache_ablation_first[PATCH_AT][:, position] - clean_cache[PATCH_AT][:, position]).abs().max()
)
print(f"either order: identical logits {same_logits}, identical caches {same_cache}")
print(
    "run_with_hooks inside the ablation gives the same logits: "
    f"{torch.equal(logits_run_with_hooks, logits_ablation_first)}"
)
print(f"largest |activation| of an ablated neuron in your cache: {ablated_max}")
print(f"patched position differs from the clean run by {patched_error}")
print(
    "both act: the combined run differs from the patch alone "
    f"{not torch.equal(logits_patch_only, logits_ablation_first)} and from the ablation alone "
    f"{not torch.equal(logits_ablation_only, logits_ablation_first)}"
)
print(f"hooks: {hooks_before} before, {hooks_after} after")

# %% [markdown]
# ## Where order does matter: the same hook point
#
# Hooks on one hook point run in the order they were added. A hook of yours on an ablated
# layer's `mlp.hook_post` sees the original activations if added before the ablation, and the
# zeros if added after it.

# %%
layer, indices = next(iter(neurons.by_layer().items()))
seen: dict[str, float] = {}


def read_into(key: str):
    def hook(activation: torch.Tensor, hook) -> None:
        seen[key] = float(activation[..., indices].abs().max())

    return hook


with (
    torch.no_grad(),
    model.hooks(fwd_hooks=[(mlp_hook_name(layer), read_into("added before"))]),
    ablate(model, neurons),
    model.hooks(fwd_hooks=[(mlp_hook_name(layer), read_into("added after"))]),
):
    model(tokens)
print(f"layer {layer}'s ablated neurons, largest |activation| seen by a hook {seen}")
