import pytest
import torch

from neuroplastic.core.ablation import ablate, mlp_neuron_weights, prune_weights
from neuroplastic.core.models import check_mlp_hooks, mlp_hook_name, resid_post_name, run_forward
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.stats import collect_stats
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError

MLP = lambda name: name.endswith("mlp.hook_post")  # noqa: E731


def hook_count(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


def chosen(model) -> NeuronSet:
    return NeuronSet.of(model.cfg.n_layers, model.cfg.d_mlp, [(0, 1), (0, 5), (1, 2), (1, 63)])


@pytest.fixture
def batch(tiny_model, corpus):
    return encode_split(corpus, tiny_model.tokenizer, "validation", limit=4).collate([0, 1, 2, 3])


def mlp_cache(model, batch):
    _, cache = model.run_with_cache(
        batch.tokens, attention_mask=batch.attention_mask, names_filter=MLP
    )
    return cache


def test_zero_ablation_zeroes_activations_and_gradients(tiny_model, batch):
    neurons = chosen(tiny_model)
    before = mlp_cache(tiny_model, batch)
    mask = neurons.mask()
    with ablate(tiny_model, neurons):
        after = mlp_cache(tiny_model, batch)
        for layer in range(tiny_model.cfg.n_layers):
            name = mlp_hook_name(layer)
            assert (after[name][..., mask[layer]] == 0).all()
            # Untouched neurons of the first layer are exactly as before.
            if layer == 0:
                assert torch.equal(after[name][..., ~mask[0]], before[name][..., ~mask[0]])
        tiny_model.zero_grad()
        resid = run_forward(
            tiny_model, batch.tokens, batch.attention_mask, stop_at=resid_post_name(tiny_model)
        )
        resid.pow(2).sum().backward()
    for layer, indices in neurons.by_layer().items():
        w_in, _, _ = mlp_neuron_weights(tiny_model, layer)
        parameter = _parameter_of(tiny_model, w_in.tensor)
        grad = parameter.grad
        assert grad is not None and grad.abs().sum() > 0
        assert (grad.index_select(w_in.neuron_dim, torch.tensor(indices)) == 0).all()
    tiny_model.zero_grad()


def _parameter_of(model, tensor):
    return next(p for p in model.parameters() if p.data_ptr() == tensor.data_ptr())


def test_mean_ablation_uses_the_overall_mean(tiny_gpt2, corpus):
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=8)
    stats = collect_stats(tiny_gpt2, dataset, progress=False)
    neurons = chosen(tiny_gpt2)
    batch = dataset.collate([0, 1])
    with ablate(tiny_gpt2, neurons, mode="mean", stats=stats):
        cache = mlp_cache(tiny_gpt2, batch)
    expected = stats.overall_mean()[1, 2].float()
    assert torch.allclose(
        cache[mlp_hook_name(1)][..., 2], expected.expand(2, batch.tokens.shape[1])
    )
    with pytest.raises(NeuroplasticError, match="needs NeuronStats"):
        ablate(tiny_gpt2, neurons, mode="mean")


def test_hooks_removed_after_exception_and_by_handle(tiny_model, batch):
    baseline = hook_count(tiny_model)
    with pytest.raises(RuntimeError, match="boom"), ablate(tiny_model, chosen(tiny_model)):
        assert hook_count(tiny_model) > baseline
        raise RuntimeError("boom")
    assert hook_count(tiny_model) == baseline
    handle = ablate(tiny_model, chosen(tiny_model), permanent=True)
    tiny_model.reset_hooks()  # a permanent ablation survives other code's hook resets
    assert (mlp_cache(tiny_model, batch)[mlp_hook_name(0)][..., 1] == 0).all()
    handle.remove()
    assert hook_count(tiny_model) == baseline and not handle.active
    assert (mlp_cache(tiny_model, batch)[mlp_hook_name(0)][..., 1] != 0).any()


def test_weight_pruning_silences_neurons_without_hooks(tiny_model, batch):
    neurons = chosen(tiny_model)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    baseline = hook_count(tiny_model)
    prune_weights(tiny_model, neurons)
    assert hook_count(tiny_model) == baseline
    cache = mlp_cache(tiny_model, batch)
    for layer, indices in neurons.by_layer().items():
        assert (cache[mlp_hook_name(layer)][..., indices] == 0).all()
        _, _, w_out = mlp_neuron_weights(tiny_model, layer)
        assert (w_out.tensor.index_select(w_out.neuron_dim, torch.tensor(indices)) == 0).all()
    tiny_model.load_state_dict(state)


def test_neuron_set_must_fit_the_model(tiny_gpt2):
    with pytest.raises(NeuroplasticError, match="2 x 64"):
        ablate(tiny_gpt2, NeuronSet.of(3, 64, [(2, 0)]))
    with pytest.raises(NeuroplasticError, match=r"a NeuronSet, got a set: .*NeuronSet.of\(2, 64"):
        ablate(tiny_gpt2, {(0, 1)})


def test_model_without_mlp_hooks_is_refused():
    class AttentionOnly(torch.nn.Module):
        cfg = type("cfg", (), {"n_layers": 2, "d_mlp": 8})()
        hook_dict = {"blocks.0.attn.hook_z": None}

    with pytest.raises(NeuroplasticError, match="no MLP hook points"):
        check_mlp_hooks(AttentionOnly())
    with pytest.raises(NeuroplasticError, match="not a TransformerLens-style model"):
        check_mlp_hooks(torch.nn.Linear(2, 2))


def test_local_model_directory_loads_like_a_hub_name(tiny_gpt2, tmp_path):
    """The hub path (boot_transformers by name) on a directory saved the way the hub stores it."""
    from neuroplastic.core.generated import generated_model as _tiny
    from neuroplastic.core.models import load_model

    hf_model, tokenizer, _ = _tiny("tiny-gpt2", seed=0)  # the weights tiny_gpt2 was booted from
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert (loaded.cfg.n_layers, loaded.cfg.d_mlp) == (2, 64)
    tokens = tiny_gpt2.tokenizer("Paris is big", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = tiny_gpt2(tokens, return_type="logits")
        torch.testing.assert_close(loaded(tokens, return_type="logits"), expected)


def test_handle_reports_hooks_removed_behind_its_back(tiny_gpt2):
    handle = ablate(tiny_gpt2, chosen(tiny_gpt2))
    assert handle.active
    tiny_gpt2.reset_hooks()
    assert not handle.active
    handle.remove()
