"""The removal seam (issue 18, section 3): a neuron removal held as the pipeline holds it, in
both modes, against what the ablation and weight pruning do directly."""

import copy

import torch

from neuroplastic.core.ablation import mlp_neuron_weights
from neuroplastic.core.models import load_model, mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.removal import NeuronRemoval
from neuroplastic.data.load import encode_split

MLP = lambda name: name.endswith("mlp.hook_post")  # noqa: E731


def chosen(model) -> NeuronSet:
    return NeuronSet.of(model.cfg.n_layers, model.cfg.d_mlp, [(0, 1), (0, 5), (1, 2)])


def mlp_activations(model, batch):
    _, cache = model.run_with_cache(
        batch.tokens, attention_mask=batch.attention_mask, names_filter=MLP
    )
    return cache


def test_hold_keeps_the_neurons_silent_until_released(tiny_model, corpus):
    batch = encode_split(corpus, tiny_model.tokenizer, "validation", limit=4).collate([0, 1, 2])
    neurons = chosen(tiny_model)
    removal = NeuronRemoval(neurons, "hold")
    before = mlp_activations(tiny_model, batch)
    weights = copy.deepcopy(tiny_model.state_dict())
    removal.start(tiny_model)  # hooks only: no weight changes
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.state_dict().items())
    assert torch.equal(removal.dead, neurons.mask())
    hold = removal.hold(tiny_model)
    tiny_model.reset_hooks()  # other code's bookkeeping: a held removal survives it
    assert hold.active
    held = mlp_activations(tiny_model, batch)
    hold.remove()
    after = mlp_activations(tiny_model, batch)
    mask = neurons.mask()
    for layer in range(tiny_model.cfg.n_layers):
        name = mlp_hook_name(layer)
        assert (held[name][..., mask[layer]] == 0).all()
        if layer == 0:  # nothing upstream changed: the other neurons are exactly as before
            assert torch.equal(held[name][..., ~mask[0]], before[name][..., ~mask[0]])
        assert torch.equal(after[name], before[name])


def test_regrow_zeroes_the_input_weights_once_and_holds_nothing():
    model = load_model("tiny-gpt2", seed=0)  # its own copy: the weights are edited
    neurons = chosen(model)
    removal = NeuronRemoval(neurons, "regrow")
    assert removal.hold(model) is None and removal.dead is None
    removal.start(model)
    for layer, indices in neurons.by_layer().items():
        w_in, b_in, w_out = mlp_neuron_weights(model, layer)
        index = torch.tensor(indices)
        assert (w_in.tensor.index_select(w_in.neuron_dim, index) == 0).all()
        assert (b_in[index] == 0).all()
        # The output side is kept, so the neuron gets gradient and can regrow.
        assert (w_out.tensor.index_select(w_out.neuron_dim, index) != 0).any()


def test_a_removal_says_what_it_removed(tiny_gpt2):
    neurons = chosen(tiny_gpt2)
    assert NeuronRemoval(neurons).describe() == "3 MLP neurons, zero-ablated and held"
    assert NeuronRemoval(neurons, "regrow").describe() == "3 MLP neurons, input weights zeroed once"
