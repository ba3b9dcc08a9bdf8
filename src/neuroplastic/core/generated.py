"""Models generated offline, never downloaded: ``tiny-gpt2``, ``tiny-bert`` and ``tiny-llama``
(small random models with offline tokenizers, for tests and demos; ``tiny-llama`` has SmolLM2's
architecture: RMSNorm, rotary positions, grouped-query attention, a SwiGLU MLP and tied
embeddings, with the tiny GPT-2's byte-level BPE tokenizer) and ``random-gpt2-*`` (randomly
initialised GPT-2-architecture models of real sizes, for timing without the hub).
:func:`neuroplastic.core.models.load_model` wraps them as TransformerLens bridges."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from neuroplastic.core.pretrained import cache_root, embedded_model_path

TINY_MODELS = ("tiny-gpt2", "tiny-bert", "tiny-llama")
# Randomly initialised GPT-2-architecture models of real sizes, for timing without the hub:
# (layers, d_model, heads). "gpt2-1b" is ~1.3B parameters (GPT-2 XL's width, 24 layers).
RANDOM_SHAPES = {
    "random-gpt2-small": (12, 768, 12),
    "random-gpt2-medium": (24, 1024, 16),
    "random-gpt2-1b": (24, 2048, 16),
}

_TOKENIZER_VERSION = 2  # bump when the tiny tokenizers change (v2: held-out corpus split)


@functools.cache
def _tiny_tokenizer_dir(kind: str) -> str:
    """An offline tokenizer saved to disk (TransformerLens only accepts reloaded tokenizers),
    built once per machine in :func:`~neuroplastic.core.pretrained.cache_root`."""
    root = cache_root()
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


def generated_model(name: str, seed: int, device: str = "cpu") -> tuple[Any, Any, str]:
    """The Hugging Face model ``name`` (a tiny or random-shape one) initialised from ``seed``,
    its tokenizer, and the directory holding both's files, as TransformerLens loads them."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    own_dir = name in RANDOM_SHAPES or name == "tiny-llama"  # the tiny GPT-2's tokenizer
    kind = "gpt2" if own_dir else name.removeprefix("tiny-")
    directory = _tiny_tokenizer_dir(kind)
    if own_dir:
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
    elif name == "tiny-llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,  # d_mlp: 64 gated neurons per layer
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,  # grouped-query attention, as SmolLM2 (9 heads, 3 groups)
            max_position_embeddings=160,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            # No pad_token_id: Llama would zero its embedding, and here pad is also bos.
        )
        hf_model = LlamaForCausalLM(config)
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


__all__ = ["RANDOM_SHAPES", "TINY_MODELS", "generated_model"]
