"""LoRA adapters for a ``with`` block (``neuroplastic.core.adapters``), on the tiny models.

Checked against expectations computed apart from the module: parameter counts from the Hugging
Face configs, the base weights and logits of the model before the block, the ablated neurons'
activations read off the hook point, and the optimizer's own parameter list.
"""

import math
import sys

import pytest
import torch

from neuroplastic.core.ablation import ablate
from neuroplastic.core.adapters import DEFAULT_TARGETS, lora_adapters
from neuroplastic.core.models import mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.training import TrainConfig, Trainer, lm_loss, train
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError

pytest.importorskip("peft")

QKV = ("attn.q", "attn.k", "attn.v")
HELD = [(0, 3), (0, 17), (1, 0), (1, 63)]
#: a few steps at a learning rate large enough that every adapter moves
CONFIG = TrainConfig(learning_rate=1e-2, weight_decay=0.0, batch_size=4, warmup_fraction=0.0)


@pytest.fixture
def llama(tiny_llama):
    """The session's tiny-llama, its weights, flags and hooks as they were after the test."""
    state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    flags = [(p, p.requires_grad) for p in tiny_llama.parameters()]
    yield tiny_llama
    tiny_llama.reset_hooks(including_permanent=True)
    tiny_llama.load_state_dict(state)
    for parameter, requires_grad in flags:
        parameter.requires_grad_(requires_grad)


@pytest.fixture
def data(tiny_llama, corpus):
    return encode_split(corpus, tiny_llama.tokenizer, "train", limit=16)


@pytest.fixture
def tokens(tiny_llama):
    return tokens_for(tiny_llama)


def tokens_for(model):
    return torch.randint(0, model.cfg.d_vocab, (3, 11), generator=torch.Generator().manual_seed(0))


def snapshot(model):
    """Everything that must come back on exit, copied."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modules": [(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)],
        "flags": [p.requires_grad for p in model.parameters()],
        "parameters": [id(p) for p in model.parameters()],
        "hooks": sorted(model.hook_dict),
    }


def assert_restored(model, before):
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    changed = [k for k, v in after["state"].items() if not torch.equal(v, before["state"][k])]
    assert not changed
    assert after["modules"] == before["modules"]
    assert after["flags"] == before["flags"]
    assert after["parameters"] == before["parameters"]
    assert after["hooks"] == before["hooks"]
    assert "peft_config" not in vars(model)


def base_weights(model, adapters):
    """Every parameter of the model that is not an adapter's, by identity, copied."""
    own = {id(p) for p in adapters}
    return [p.detach().clone() for p in model.parameters() if id(p) not in own]


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens, return_type="logits")


# -- what the block adds ----------------------------------------------------------------------
def hand_count(config, name: str, rank: int) -> int:
    """r * (in + out) over the targeted Linear(in, out) of every block, from the HF config."""
    if name == "tiny_llama":
        d, mlp = config.hidden_size, config.intermediate_size
        q, kv = (
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        )
        shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, mlp), (d, mlp), (mlp, d)]
        layers = config.num_hidden_layers
    elif name == "tiny_bert":  # no gate: q, k, v, o, intermediate, output
        d, mlp = config.hidden_size, config.intermediate_size
        shapes = [(d, d)] * 4 + [(d, mlp), (mlp, d)]
        layers = config.num_hidden_layers
    else:  # tiny_gpt2, q/k/v only: its other projections are Conv1D
        shapes, layers = [(config.n_embd, config.n_embd)] * 3, config.n_layer
    return layers * sum(rank * (n_in + n_out) for n_in, n_out in shapes)


@pytest.mark.parametrize("rank", [1, 4])
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_bert", "tiny_gpt2"])
def test_the_adapters_count_rank_times_in_plus_out(request, name, rank):
    model = request.getfixturevalue(name)
    targets = QKV if name == "tiny_gpt2" else DEFAULT_TARGETS
    with lora_adapters(model, rank, targets=targets) as adapters:
        assert adapters.count == hand_count(model.original_model.config, name, rank)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert {id(p) for p in trainable} == {id(p) for p in adapters}
        assert len(trainable) == 2 * len(adapters.names)  # an A and a B per adapted Linear
    per_block = 7 if name == "tiny_llama" else 6 if name == "tiny_bert" else 3
    assert len(adapters.names) == per_block * model.cfg.n_layers


def test_the_names_are_the_bridge_components_and_alpha_defaults_to_rank(llama):
    with lora_adapters(llama, rank=4) as adapters:
        assert adapters.names[:7] == [f"blocks.0.{t}" for t in DEFAULT_TARGETS]
        assert adapters.alpha == 4.0
        assert all(layer.scaling["default"] == 1.0 for layer in adapters.layers)
        assert llama.blocks[1].mlp.gate.original_component is adapters.layers[11]
    with lora_adapters(llama, rank=4, alpha=16, dropout=0.25) as adapters:
        assert all(layer.scaling["default"] == 4.0 for layer in adapters.layers)
        assert all(layer.lora_dropout["default"].p == 0.25 for layer in adapters.layers)
    # A Hugging Face name reaches the same component as the bridge's: adapted once.
    with lora_adapters(llama, rank=2, targets=("mlp.in", "mlp.up_proj")) as adapters:
        assert adapters.names == ["blocks.0.mlp.in", "blocks.1.mlp.in"]


def test_the_adapters_start_as_the_identity(llama, tokens):
    plain = logits(llama, tokens)
    with lora_adapters(llama, rank=4) as adapters:
        assert all(not layer.lora_B["default"].weight.any() for layer in adapters.layers)
        assert torch.equal(logits(llama, tokens), plain)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_every_adapter_is_on_the_forward_path(request, name):
    """A bridge that computed a projection some other way would leave its adapter inert."""
    model = request.getfixturevalue(name)
    tokens = tokens_for(model)
    plain = logits(model, tokens)
    with lora_adapters(model, rank=2, targets=QKV if name == "tiny_gpt2" else DEFAULT_TARGETS) as a:
        for layer, component in zip(a.layers, a.names, strict=True):
            weight = layer.lora_B["default"].weight
            with torch.no_grad():
                weight.fill_(0.05)
            moved = (logits(model, tokens) - plain).abs().max()
            with torch.no_grad():
                weight.zero_()
            assert moved > 1e-5, component
    assert torch.equal(logits(model, tokens), plain)


# -- training ---------------------------------------------------------------------------------
def test_the_trainer_optimizes_the_adapters_only(llama, data):
    with lora_adapters(llama, rank=2) as adapters:
        trainer = Trainer(llama, lm_loss, data, 1, CONFIG, seed=0)
        optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        assert {id(p) for p in optimized} == {id(p) for p in adapters}


def test_training_moves_the_adapters_and_no_base_weight(llama, data, tokens):
    before = snapshot(llama)
    plain = logits(llama, tokens)
    with lora_adapters(llama, rank=4) as adapters:
        base = base_weights(llama, adapters)
        start = [p.detach().clone() for p in adapters]
        losses = train(llama, lm_loss, data, 3, CONFIG, seed=0, progress=False)
        assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
        unmoved = [
            n for n, (p, s) in enumerate(zip(adapters, start, strict=True)) if torch.equal(p, s)
        ]
        assert not unmoved  # every A and every B (B from zero)
        assert all(
            torch.equal(p, b) for p, b in zip(base_weights(llama, adapters), base, strict=True)
        )
        assert not torch.equal(logits(llama, tokens), plain)  # what they learned is used
        # Inside, the bridge's state_dict() has the base weights only, adapted ones renamed.
        adapted = {f"{name}.weight" for name in adapters.names}
        renamed = {
            k.replace(".weight", ".base_layer.weight") if k in adapted else k: k
            for k in before["state"]
        }
        inside = llama.state_dict()
        assert inside.keys() == renamed.keys()
        assert all(torch.equal(v, before["state"][renamed[k]]) for k, v in inside.items())
    assert_restored(llama, before)
    assert torch.equal(logits(llama, tokens), plain)


# -- a held ablation --------------------------------------------------------------------------
def held_activations(model):
    """A hook per layer of HELD that records its neurons' largest |activation| per pass."""
    seen: dict[int, list[float]] = {0: [], 1: []}
    hooks = []
    for layer, indices in NeuronSet.of(2, model.cfg.d_mlp, HELD).by_layer().items():

        def record(activation, hook, layer=layer, indices=indices):
            seen[layer].append(float(activation.detach()[..., indices].abs().max()))

        hooks.append((mlp_hook_name(layer), record))
    return seen, hooks


def test_a_held_ablation_holds_inside_the_block_and_through_training(llama, data, tokens):
    neurons = NeuronSet.of(llama.cfg.n_layers, llama.cfg.d_mlp, HELD)
    seen, hooks = held_activations(llama)
    with llama.hooks(fwd_hooks=hooks):
        logits(llama, tokens)
    assert min(seen[0] + seen[1]) > 0  # the neurons fire when nothing holds them
    with ablate(llama, neurons, permanent=True), lora_adapters(llama, rank=4) as adapters:
        for layer in adapters.layers:  # adapters that change every MLP's input and output
            with torch.no_grad():
                layer.lora_B["default"].weight.normal_(
                    0, 0.05, generator=torch.Generator().manual_seed(1)
                )
        seen, hooks = held_activations(llama)
        with llama.hooks(fwd_hooks=hooks):
            logits(llama, tokens)
            train(llama, lm_loss, data, 3, CONFIG, seed=0, progress=False)
        assert len(seen[0]) == len(seen[1]) == 1 + 3  # the forward and three training steps
        assert seen[0] == seen[1] == [0.0] * 4


# -- leaving the block ------------------------------------------------------------------------
def test_leaving_the_block_restores_the_model_exactly(llama, tokens):
    for parameter in llama.parameters():  # all trainable but one, whatever came before
        parameter.requires_grad_(
            parameter is not llama.blocks[0].mlp.gate.original_component.weight
        )
    before, plain = snapshot(llama), logits(llama, tokens)
    with lora_adapters(llama, rank=4) as adapters:
        for layer in adapters.layers:
            with torch.no_grad():
                layer.lora_B["default"].weight.fill_(0.05)
        assert not torch.equal(logits(llama, tokens), plain)
    assert_restored(llama, before)
    assert before["flags"].count(False) == 1
    assert torch.equal(logits(llama, tokens), plain)


def test_what_is_merged_before_exit_stays(llama, tokens):
    """The one way to keep what the adapters learned: merge it into the base weights."""
    with lora_adapters(llama, rank=4) as adapters:
        for layer in adapters.layers:
            with torch.no_grad():
                layer.lora_B["default"].weight.fill_(0.05)
        adapted = logits(llama, tokens)
        for layer in adapters.layers:
            layer.merge()
    assert not any(hasattr(m, "lora_A") for m in llama.modules())
    torch.testing.assert_close(logits(llama, tokens), adapted, rtol=0, atol=1e-5)


def test_an_exception_inside_the_block_restores_the_model(llama, data, tokens):
    before, plain = snapshot(llama), logits(llama, tokens)
    with pytest.raises(RuntimeError, match="stopped"), lora_adapters(llama, rank=2):
        train(llama, lm_loss, data, 2, CONFIG, seed=0, progress=False)
        raise RuntimeError("stopped")
    assert_restored(llama, before)
    assert torch.equal(logits(llama, tokens), plain)


def test_a_failed_injection_leaves_the_model_as_it_was(llama, monkeypatch):
    import peft

    before = snapshot(llama)
    original = peft.tuners.lora.LoraModel._create_and_replace
    calls = []

    def fail_on_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injection broke")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(peft.tuners.lora.LoraModel, "_create_and_replace", fail_on_the_third)
    with pytest.raises(RuntimeError, match="injection broke"), lora_adapters(llama, rank=2):
        pass
    assert_restored(llama, before)


# -- refusals ---------------------------------------------------------------------------------
def test_targets_that_match_nothing_are_refused(llama):
    before = snapshot(llama)
    with pytest.raises(NeuroplasticError, match=r"no block has mlp\.nope.*mlp\.gate"):
        with lora_adapters(llama, rank=2, targets=("mlp.in", "mlp.nope")):
            pass
    with pytest.raises(NeuroplasticError, match="no block has"):
        with lora_adapters(llama, rank=2, targets=()):
            pass
    assert_restored(llama, before)


def test_conv1d_and_non_linear_targets_are_refused(tiny_gpt2, llama):
    with pytest.raises(NeuroplasticError, match=r"blocks\.0\.attn\.o \(Conv1D\).*attn\.q, attn\.k"):
        with lora_adapters(tiny_gpt2, rank=2):
            pass
    assert not any(hasattr(m, "lora_A") for m in tiny_gpt2.modules())
    with pytest.raises(NeuroplasticError, match=r"not blocks\.0\.mlp \(LlamaMLP\)"):
        with lora_adapters(llama, rank=2, targets=("mlp",)):
            pass


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rank": 0}, "rank must be"),
        ({"rank": 2.0}, "rank must be"),
        ({"rank": 2, "alpha": 0}, "alpha must be positive"),
        ({"rank": 2, "dropout": 1.0}, "dropout must be"),
    ],
)
def test_bad_settings_are_refused(llama, settings, message):
    with pytest.raises(NeuroplasticError, match=message), lora_adapters(llama, **settings):
        pass


def test_a_block_inside_another_and_a_plain_module_are_refused(llama):
    with lora_adapters(llama, rank=2):
        with pytest.raises(NeuroplasticError, match="already has a LoRA adapter"):
            with lora_adapters(llama, rank=2):
                pass
    with pytest.raises(NeuroplasticError, match="needs a TransformerBridge"):
        with lora_adapters(torch.nn.Linear(3, 3), rank=2):
            pass


def test_a_missing_peft_names_the_extra(llama, monkeypatch):
    for name in [n for n in sys.modules if n == "peft" or n.startswith("peft.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(NeuroplasticError, match=r'pip install "neuroplastic\[adapters\]"'):
        with lora_adapters(llama, rank=2):
            pass
