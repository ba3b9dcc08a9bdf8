"""Gated (SwiGLU) MLP neurons, checked by hand against the Hugging Face module.

In a Llama-style MLP, ``down(act(gate(x)) * up(x))``, neuron ``i`` is ``act(gate_i·x) * (up_i·x)``:
the coefficient of column ``i`` of the down projection. These tests check, on ``tiny-llama``
(SmolLM2's architecture at toy size), that ``blocks.{l}.mlp.hook_post`` is that product, that
ablating it removes the neuron's whole contribution, that every consumer of the hook point
(statistics, rankers, mean ablation, views, probes) works on it, and which weights ``--mode
regrow`` zeroes.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuroplastic.core.ablation import ablate, check_can_regrow, mlp_neuron_weights
from neuroplastic.core.activations import neuron_activations
from neuroplastic.core.generated import generated_model
from neuroplastic.core.models import load_model, mlp_hook_name, resid_post_name, run_forward
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.probes import ResidualTap, probe_auc, tapped_residuals
from neuroplastic.core.ranking import RANKERS, Ranking
from neuroplastic.core.removal import NeuronRemoval
from neuroplastic.core.stats import collect_stats
from neuroplastic.core.training import evaluate
from neuroplastic.data.load import encode_split
from neuroplastic.report.views import examples_from_model, neuron_view

CHOSEN = [(0, 3), (0, 17), (1, 0), (1, 63)]


@pytest.fixture
def llama(tiny_llama):
    yield tiny_llama
    tiny_llama.reset_hooks(including_permanent=True)


@pytest.fixture(scope="module")
def hf_llama():
    """The same weights as an independent Hugging Face model (generated from the same seed)."""
    hf_model, _, _ = generated_model("tiny-llama", seed=0)
    return hf_model.eval()


@pytest.fixture(scope="module")
def data(tiny_llama, corpus):
    return encode_split(corpus, tiny_llama.tokenizer, "validation", limit=12)


@pytest.fixture
def batch(data):
    return data.collate(list(range(6)))


def neurons(model) -> NeuronSet:
    return NeuronSet.of(model.cfg.n_layers, model.cfg.d_mlp, CHOSEN)


def hand_products(hf_model, batch) -> dict[int, torch.Tensor]:
    """silu(gate·x) * (up·x) per layer, from the Hugging Face MLP's own weights and input."""
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.mlp.register_forward_pre_hook(
            lambda module, args, i=i: inputs.__setitem__(i, args[0].detach())
        )
        for i, layer in enumerate(hf_model.model.layers)
    ]
    try:
        with torch.no_grad():
            hf_model(input_ids=batch.tokens, attention_mask=batch.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    products = {}
    for i, layer in enumerate(hf_model.model.layers):
        x, mlp = inputs[i], layer.mlp
        assert mlp.act_fn.__class__.__name__ == "SiLUActivation" or mlp.config.hidden_act == "silu"
        gate = x @ mlp.gate_proj.weight.T
        up = x @ mlp.up_proj.weight.T
        products[i] = gate * torch.sigmoid(gate) * up  # silu(g) = g * sigmoid(g)
    return products


def bridge_cache(model, batch) -> dict:
    _, cache = model.run_with_cache(
        batch.tokens,
        attention_mask=batch.attention_mask,
        names_filter=lambda n: n.endswith(("mlp.hook_post", "hook_resid_post")),
    )
    return cache


def test_tiny_llama_is_a_gated_silu_llama(llama, hf_llama):
    assert type(hf_llama).__name__ == "LlamaForCausalLM"
    assert llama.cfg.gated_mlp and llama.cfg.act_fn == "silu"
    assert (llama.cfg.n_layers, llama.cfg.d_mlp) == (2, 64)
    assert hf_llama.config.num_key_value_heads < hf_llama.config.num_attention_heads  # GQA
    assert hf_llama.config.tie_word_embeddings
    for name in ("hook_pre", "hook_pre_linear", "hook_post"):
        assert f"blocks.0.mlp.{name}" in llama.hook_dict
    # The bridge wraps a model with the very weights of the independent one.
    # (The bridge wraps each submodule: its keys gain "._original_component".)
    wrapped = {
        k.replace("._original_component", ""): v
        for k, v in llama.original_model.state_dict().items()
    }
    for name, theirs in hf_llama.state_dict().items():
        assert torch.equal(wrapped[name], theirs), name


def test_hook_post_is_silu_gate_times_up(llama, hf_llama, batch):
    cache = bridge_cache(llama, batch)
    real = batch.attention_mask.bool()
    for layer, product in hand_products(hf_llama, batch).items():
        ours = cache[mlp_hook_name(layer)]
        assert ours.shape == product.shape
        torch.testing.assert_close(ours[real], product[real], rtol=1e-5, atol=1e-6)


def test_mlp_weights_are_up_for_in_and_down_for_out(llama, hf_llama):
    """``mlp_neuron_weights`` (weight pruning) gives the up projection as the input side."""
    for layer in range(llama.cfg.n_layers):
        w_in, b_in, w_out = mlp_neuron_weights(llama, layer)
        hf_mlp = llama.original_model.model.layers[layer].mlp
        assert w_in.tensor.data_ptr() == hf_mlp.up_proj.weight.data_ptr() and w_in.neuron_dim == 0
        assert w_out.tensor.data_ptr() == hf_mlp.down_proj.weight.data_ptr()
        assert w_out.neuron_dim == 1 and b_in is None


def test_ablating_hook_post_equals_zeroing_the_down_column(llama, hf_llama, batch):
    """The neuron's whole contribution is its down-projection column times its activation:
    zero-ablating the hook gives the logits and residual stream of a model whose columns are
    zero, both on the bridge itself and on the independent Hugging Face model."""
    chosen = neurons(llama)
    with torch.no_grad():
        plain = llama(batch.tokens, attention_mask=batch.attention_mask)
        with ablate(llama, chosen):
            held = llama(batch.tokens, attention_mask=batch.attention_mask)
            held_resid = bridge_cache(llama, batch)[resid_post_name(llama)]
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    hf_state = {k: v.clone() for k, v in hf_llama.state_dict().items()}
    try:
        with torch.no_grad():
            for layer, indices in chosen.by_layer().items():
                for model in (llama.original_model, hf_llama):
                    model.model.layers[layer].mlp.down_proj.weight[:, indices] = 0.0
            zeroed = llama(batch.tokens, attention_mask=batch.attention_mask)
            zeroed_resid = bridge_cache(llama, batch)[resid_post_name(llama)]
            hf_zeroed = hf_llama(input_ids=batch.tokens, attention_mask=batch.attention_mask).logits
    finally:
        llama.load_state_dict(state)
        hf_llama.load_state_dict(hf_state)
    real = batch.attention_mask.bool()
    assert not torch.allclose(held[real], plain[real])  # the ablation did change the forward
    assert torch.equal(held[real], zeroed[real])  # identical, not merely close
    assert torch.equal(held_resid[real], zeroed_resid[real])
    torch.testing.assert_close(held[real], hf_zeroed[real], rtol=1e-5, atol=1e-5)


def test_statistics_rankers_and_views_read_the_product(llama, hf_llama, data):
    stats = collect_stats(llama, data, batch_size=5, top_k=4, progress=False)
    everything = data.collate(list(range(len(data))))
    counted = everything.concept_labels >= 0  # the tokens statistics fold in
    for layer, product in hand_products(hf_llama, everything).items():
        by_hand = product[counted].sum(0)
        torch.testing.assert_close(stats.sum.sum(0)[layer].float(), by_hand, rtol=1e-4, atol=1e-5)
        top = product[counted].max(0).values
        torch.testing.assert_close(stats.top_values[layer, :, 0].float(), top, rtol=1e-5, atol=1e-6)
    for method in RANKERS:
        ranking = Ranking.from_stats(stats, "LOC", method)
        assert bool(ranking.alive.all()) and torch.isfinite(ranking.scores).all(), method
    chosen = neurons(llama)
    examples = examples_from_model(llama, data, chosen, stats, max_sentences=2)
    cache = bridge_cache(llama, data.collate([int(stats.top_sentence[0, 3, 0])]))
    first = examples[0]
    assert (first.layer, first.neuron) == (0, 3)
    real = cache[mlp_hook_name(0)][0, : len(first.activations[0]), 3]  # padding dropped
    np.testing.assert_allclose(first.activations[0], real.numpy(), rtol=1e-5, atol=1e-6)
    view = neuron_view(llama, data, chosen, top_k=4, stats=stats, max_sentences=2)
    assert "L1:N63" in str(view)


def test_mean_ablation_and_probes_on_a_gated_model(llama, data):
    stats = collect_stats(llama, data, batch_size=6, top_k=2, progress=False)
    chosen = neurons(llama)
    with ablate(llama, chosen, mode="mean", stats=stats):
        seen = neuron_activations(llama, data, CHOSEN, [0, 1])
    mean = stats.overall_mean()
    for column, (layer, neuron) in enumerate(CHOSEN):
        for sentence in (0, 1):
            expected = np.full(len(seen[sentence]), float(mean[layer, neuron]), dtype=np.float32)
            np.testing.assert_allclose(seen[sentence][:, column], expected, rtol=1e-6)
    with ablate(llama, chosen):
        auc = probe_auc(llama, data, data, "LOC", layers=[0, 1], steps=10)
    assert set(auc) == {0, 1} and all(0.0 <= v <= 1.0 for v in auc.values())


def test_tokens_render_with_spaces_not_bpe_marks(llama, data):
    """The byte-level BPE's Ġ (space) and Ċ (newline) never reach a view: token strings are
    decoded text."""
    strings = [t for i in range(len(data)) for t in data.token_strings(i)]
    assert any(t.startswith(" ") for t in strings)
    assert not any("Ġ" in t or "Ċ" in t for t in strings)
    ids = llama.tokenizer("Paris is\nnice").input_ids
    assert "Ċ" in "".join(llama.tokenizer.convert_ids_to_tokens(ids))  # the raw spelling
    assert "\n" in "".join(llama.tokenizer.decode([t]) for t in ids)


# -- regrow -------------------------------------------------------------------------------------
def lm_loss(model, batch) -> torch.Tensor:
    logits = model(batch.tokens, attention_mask=batch.attention_mask)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch.tokens[:, 1:].flatten())


def mlp_rows(model, layer, indices):
    mlp = model.original_model.model.layers[layer].mlp
    return (
        mlp.gate_proj.weight[indices],
        mlp.up_proj.weight[indices],
        mlp.down_proj.weight[:, indices],
    )


@pytest.fixture
def fresh():
    """A tiny-llama of its own (the regrow tests change its weights)."""
    return load_model("tiny-llama", seed=1)


def test_regrow_zeroes_the_up_rows_only(fresh, batch):
    """``--mode regrow`` zeroes each neuron's row of the up projection, and nothing else: its
    activation silu(gate·x)·0 is exactly zero, and its gate row and down column are as trained."""
    chosen = neurons(fresh)
    check_can_regrow(fresh)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    NeuronRemoval(chosen, "regrow").start(fresh)
    changed = {k for k, v in fresh.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"blocks.0.mlp.in.weight", "blocks.1.mlp.in.weight"}  # the up projections
    for layer, indices in chosen.by_layer().items():
        gate, up, down = mlp_rows(fresh, layer, indices)
        old_gate = before[f"blocks.{layer}.mlp.gate.weight"][indices]
        old_down = before[f"blocks.{layer}.mlp.out.weight"][:, indices]
        assert (up == 0).all() and torch.equal(gate, old_gate) and torch.equal(down, old_down)
    cache = bridge_cache(fresh, batch)
    for layer, indices in chosen.by_layer().items():
        assert (cache[mlp_hook_name(layer)][..., indices] == 0).all()


def test_a_regrow_pruned_gated_neuron_gets_gradient_and_regrows(fresh, batch):
    """Why the up rows: their gradient is δ·silu(gate·x)·x, not zero, so the neurons regrow
    from the first step (gate rows and down columns get none until the up rows move: both are
    multiplied by the zero activation or up·x). Zeroing gate and up rows both would be a
    stationary point (every gradient of the neuron zero) and it could never regrow."""
    chosen = neurons(fresh)
    NeuronRemoval(chosen, "regrow").start(fresh)
    fresh.train()
    fresh.zero_grad()
    lm_loss(fresh, batch).backward()
    for layer, indices in chosen.by_layer().items():
        assert (fresh_grad(fresh, layer, "up", indices) != 0).any()
        assert (fresh_grad(fresh, layer, "gate", indices) == 0).all()
        assert (fresh_grad(fresh, layer, "down", indices) == 0).all()
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        lm_loss(fresh, batch).backward()
        optimizer.step()
    fresh.eval()
    cache = bridge_cache(fresh, batch)
    for layer, indices in chosen.by_layer().items():
        assert (cache[mlp_hook_name(layer)][..., indices] != 0).any()  # regrown

    # The alternative: gate and up rows both zero is stationary.
    with torch.no_grad():
        for layer, indices in chosen.by_layer().items():
            mlp = fresh.original_model.model.layers[layer].mlp
            mlp.gate_proj.weight[indices] = 0.0
            mlp.up_proj.weight[indices] = 0.0
    fresh.zero_grad()
    lm_loss(fresh, batch).backward()
    for layer, indices in chosen.by_layer().items():
        for part in ("gate", "up", "down"):
            assert (fresh_grad(fresh, layer, part, indices) == 0).all(), part


def fresh_grad(model, layer, part, indices):
    mlp = model.original_model.model.layers[layer].mlp
    if part == "down":
        return mlp.down_proj.weight.grad[:, indices]
    return getattr(mlp, f"{part}_proj").weight.grad[indices]


def test_run_forward_stops_inside_a_gated_model(llama, batch):
    resid = run_forward(llama, batch.tokens, batch.attention_mask, stop_at=mlp_hook_name(0))
    assert resid.shape[-1] == llama.cfg.d_mlp


def test_a_gated_relu_mlp_may_regrow():
    """The gate is left alone, so a ReLU gate is no obstacle: the up row's gradient is
    δ·relu(gate·x)·x, not zero wherever the gate is open (a plain ReLU MLP is refused)."""
    gated = type("Model", (), {"cfg": type("Cfg", (), {"act_fn": "relu", "gated_mlp": True})})
    check_can_regrow(gated)
    x, gate_w = torch.randn(5, 4), torch.randn(1, 4)
    up_w = torch.zeros(1, 4, requires_grad=True)
    (torch.relu(x @ gate_w.T) * (x @ up_w.T)).sum().backward()
    assert (up_w.grad != 0).any()


def test_lm_statistics_read_the_positions_that_predict_the_concept(llama, hf_llama, data):
    """For ``--task lm`` the concept's statistics are taken where its loss is computed: at the
    token *before* each concept token. Checked against the Hugging Face model's own products
    and cross-entropy, position by position."""
    predicting = data.predicting()
    stats = collect_stats(llama, predicting, batch_size=5, top_k=1, progress=False)
    everything = data.collate(list(range(len(data))))
    loc = data.label_id("LOC")
    real = everything.attention_mask.bool()
    before_loc = torch.zeros_like(real)
    before_loc[:, :-1] = (everything.concept_labels[:, 1:] == loc) & real[:, 1:]
    assert 0 < int(before_loc.sum()) < int((everything.concept_labels == loc).sum()) + 1
    assert stats.count[loc] == int(before_loc.sum())
    for layer, product in hand_products(hf_llama, everything).items():
        torch.testing.assert_close(
            stats.mean()[loc, layer].float(), product[before_loc].mean(0), rtol=1e-4, atol=1e-5
        )
    with torch.no_grad():
        logits = hf_llama(input_ids=everything.tokens, attention_mask=everything.attention_mask)
    losses = F.cross_entropy(
        logits.logits[:, :-1].flatten(0, 1), everything.tokens[:, 1:].flatten(), reduction="none"
    ).view(everything.tokens.shape[0], -1)
    scored = evaluate(llama, data, "lm", "LOC", progress=False).scores["lm_loss"]["concept"]
    torch.testing.assert_close(scored, float(losses[before_loc[:, :-1]].mean()), rtol=1e-4, atol=0)
    # tokens and everything but the concept labels are the dataset's own
    assert predicting.collate([0]).tokens.equal(data.collate([0]).tokens)
    assert predicting.encoded[0].concept_labels[:-1] == data.encoded[0].concept_labels[1:]
    assert predicting.encoded[0].concept_labels[-1] == -1


def test_a_predicting_tap_labels_each_token_by_the_next(llama, data):
    """The tap's ``predicting`` labels equal a plain tap's over ``data.predicting()``: the
    batched shift (padding included) is the dataset's."""
    layers = [0, 1]
    plain = tapped_residuals(llama, data.predicting(), layers, batch_size=5)
    tap = ResidualTap(layers, len(data), predicting=True)
    with torch.no_grad(), llama.hooks(fwd_hooks=tap.hooks):
        for batch in data.batches(4, order=data.by_length()):
            run_forward(llama, batch.tokens, batch.attention_mask, stop_at=tap.last_hook)
            tap.record(batch)
    shifted = tap.residuals("resid_post")
    assert torch.equal(shifted.labels, plain.labels)
    torch.testing.assert_close(shifted.layers[1], plain.layers[1], rtol=1e-5, atol=1e-5)
