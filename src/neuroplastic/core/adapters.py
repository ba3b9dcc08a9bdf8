"""LoRA adapters on a TransformerBridge for one block of code: the retrainer's low-rank tool.

A relearning attack need not fine-tune every weight: low-rank adapters (LoRA, Hu et al. 2021)
are what most retrainers of an unlearned model reach for. :func:`lora_adapters` lets a
``with`` block retrain through them, with the removal still held, and puts the model back
exactly as it was when the block ends::

    with ablate(model, neurons, permanent=True), lora_adapters(model, rank=8) as adapters:
        train(model, lm_loss, data, steps, TrainConfig(learning_rate=1e-4), seed=0)
        print(adapters.count, "trainable parameters")

The layers are PEFT's (``peft.tuners.lora``), injected with its tuner API into the Hugging Face
``nn.Linear`` modules that the bridge's components wrap. Only the ``nn.Linear`` is swapped:
the bridge components (``blocks.{l}.mlp.gate`` ...) and their hook points stay, so hooks on
``blocks.{l}.mlp.hook_post`` and everywhere else act inside the block as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from neuroplastic.errors import NeuroplasticError
from neuroplastic.extras import require

#: The attention q/k/v/o and MLP gate/up/down projections of every block, by the bridge's own
#: component names (the same on every architecture: ``mlp.in`` is Llama's ``up_proj``, BERT's
#: ``intermediate.dense``). A block without one of them (no ``mlp.gate`` in a plain MLP) is
#: simply not adapted there.
DEFAULT_TARGETS: tuple[str, ...] = (
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.o",
    "mlp.gate",
    "mlp.in",
    "mlp.out",
)

_WRAPPED = "_original_component"  # where a bridge component keeps the module it wraps


@dataclass(frozen=True)
class LoraAdapters:
    """The adapters live inside a :func:`lora_adapters` block; iterating gives the parameters.

    Attributes:
        names: the adapted bridge components, ``blocks.{l}.{target}``, block by block.
        layers: PEFT's LoRA layer of each, in the same order.
        parameters: every adapter parameter (``lora_A``, ``lora_B`` of each layer): the only
            parameters with ``requires_grad`` inside the block.
        rank: the rank ``r`` of every adapter.
        alpha: LoRA's ``alpha``; an adapter adds ``(alpha / rank) * B @ A`` to its weight.
    """

    names: list[str]
    layers: list[nn.Module]
    parameters: list[nn.Parameter]
    rank: int
    alpha: float

    @property
    def count(self) -> int:
        """How many numbers training may change: ``rank * (in + out)`` summed over the layers."""
        return sum(p.numel() for p in self.parameters)

    def __iter__(self) -> Iterator[nn.Parameter]:
        return iter(self.parameters)


@contextmanager
def lora_adapters(
    model: Any,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
) -> Iterator[LoraAdapters]:
    """LoRA adapters of rank ``rank`` on the ``targets`` of every block, for a ``with`` block.

    Inside the block PEFT's LoRA layers wrap each targeted ``nn.Linear``, every base parameter
    has ``requires_grad=False`` and only the adapters train: ``training.train`` and its
    ``Trainer`` hand AdamW only the parameters that require gradients. PEFT starts each ``B``
    at zero, so the model computes exactly what it did until the first step. Hooks on the
    bridge's hook points (a held ablation) keep acting.
    Inside the block the bridge's ``state_dict()`` leaves the adapters out and calls each
    adapted weight ``blocks.{l}.{target}.base_layer.weight``: save or compare state dicts
    outside it.

    On exit, also on an exception, the original ``nn.Linear`` modules go back into their
    components and every ``requires_grad`` flag back to what it was: the same module tree, the
    same ``state_dict()`` keys, the base weights untouched (training changed only adapters).
    What the adapters learned is discarded with them; merge it into the weights first
    (``layer.merge()`` on each of ``adapters.layers``) if it should stay.

    Args:
        model: a ``TransformerBridge`` (:func:`neuroplastic.core.models.load_model`).
        rank: the adapters' rank ``r`` (1 or more).
        alpha: LoRA's scale numerator; None gives ``alpha = rank``, a scale ``alpha / rank`` of
            1 (PEFT's default config, ``r=8, lora_alpha=8``), whatever the rank.
        targets: component paths inside each block, by the bridge's names (``attn.q``,
            ``mlp.gate``, ``mlp.in``, ``mlp.out``...) or the Hugging Face names they are
            reachable by (``self_attn.q_proj``, ``mlp.up_proj``). Each must wrap an
            ``nn.Linear``. With :data:`DEFAULT_TARGETS` a block lacking one is skipped; a target
            you name must be found in some block.
        dropout: LoRA's dropout on each adapter's input, in training mode.

    Yields:
        The adapters: their names, layers and parameters, and :attr:`LoraAdapters.count`.

    Raises:
        NeuroplasticError: peft is missing (``pip install "neuroplastic[adapters]"``), a setting
            is out of range, no target matches, a target is missing or is not an
            ``nn.Linear``. GPT-2-style models wrap ``transformers``' ``Conv1D`` in ``attn.o``,
            ``mlp.in`` and ``mlp.out`` (and ``attn.qkv``): those are refused, by name, rather
            than adapted in part; their bridge's ``attn.q``, ``attn.k`` and ``attn.v`` are
            ``nn.Linear`` and can be targeted alone (``targets=("attn.q", "attn.k",
            "attn.v")``).
    """
    peft = require("peft", "LoRA adapters (neuroplastic.core.adapters)")
    _check_settings(rank, alpha, dropout)
    alpha = float(rank if alpha is None else alpha)
    found = _find_targets(model, targets)
    linears = [component._modules[_WRAPPED] for component in found.values()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    peft_config = vars(model).get("peft_config")  # PEFT sets its own config on the model
    try:
        layers = _inject(peft, model, linears, rank, alpha, dropout)
        adapters = LoraAdapters(
            names=list(found),
            layers=layers,
            parameters=[p for layer in layers for p in _own_parameters(layer)],
            rank=rank,
            alpha=alpha,
        )
        _train_only(model, adapters.parameters)
        yield adapters
    finally:
        # PEFT's unload() makes the same swap back, but only for the layers it finished
        # wrapping: putting back the recorded modules also undoes a half-done injection.
        for component, linear in zip(found.values(), linears, strict=True):
            setattr(component, _WRAPPED, linear)
        vars(model).pop("peft_config", None)
        if peft_config is not None:
            vars(model)["peft_config"] = peft_config
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


def _check_settings(rank: int, alpha: float | None, dropout: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise NeuroplasticError(f"lora_adapters: rank must be a whole number >= 1, got {rank!r}")
    if alpha is not None and not alpha > 0:
        raise NeuroplasticError(
            f"lora_adapters: alpha must be positive, got {alpha!r}; None gives alpha = rank"
        )
    if not 0.0 <= dropout < 1.0:
        raise NeuroplasticError(f"lora_adapters: dropout must be in [0, 1), got {dropout!r}")


def _find_targets(model: Any, targets: Sequence[str]) -> dict[str, nn.Module]:
    """``{"blocks.{l}.{target}": bridge component wrapping an nn.Linear}``, block by block."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise NeuroplasticError(
            f"lora_adapters needs a TransformerBridge with blocks, got a {type(model).__name__}: "
            "load one with neuroplastic.core.models.load_model"
        )
    if isinstance(targets, str):
        targets = (targets,)
    lenient = tuple(targets) == DEFAULT_TARGETS
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()  # a bridge name and a Hugging Face name can reach one component
    unmatched, not_linear, already = set(targets), [], []
    for layer, block in enumerate(blocks):
        for target in targets:
            component = _component(block, target)
            if component is None:
                continue
            unmatched.discard(target)
            name, wrapped = f"blocks.{layer}.{target}", component._modules.get(_WRAPPED)
            if _processed_weights(block, target):
                raise NeuroplasticError(
                    f"lora_adapters: {name} is computed from the bridge's processed weights "
                    "(compatibility mode), which bypass the module an adapter wraps; load the "
                    "model without processing its weights"
                )
            if _is_lora_layer(wrapped):
                already.append(name)
            elif not isinstance(wrapped, nn.Linear):
                not_linear.append(f"{name} ({type(wrapped).__name__})")
            elif id(component) not in seen:
                seen.add(id(component))
                found[name] = component
    if already:
        raise NeuroplasticError(
            f"lora_adapters: {already[0]} already has a LoRA adapter (a lora_adapters block "
            "inside another?); leave the outer block first"
        )
    if not_linear:
        raise NeuroplasticError(
            f"lora_adapters adapts nn.Linear modules only, not {_listed(not_linear)}. "
            "Leave these out of targets (GPT-2's "
            f"Conv1D: target only attn.q, attn.k, attn.v). Linear components of block 0: "
            f"{', '.join(_linear_components(blocks[0])) or 'none'}"
        )
    if (unmatched and not lenient) or not found:
        missing = sorted(unmatched) if unmatched and not lenient else list(targets)
        raise NeuroplasticError(
            f"lora_adapters: no block has {', '.join(missing)}; the Linear components of block "
            f"0 are: {', '.join(_linear_components(blocks[0])) or 'none'}"
        )
    return found


def _listed(names: list[str], shown: int = 4) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _component(block: nn.Module, target: str) -> nn.Module | None:
    """The bridge component at ``target`` in ``block``, or None when the block has none."""
    try:
        component = block.get_submodule(target)
    except AttributeError:
        return None
    return component if _WRAPPED in component._modules else None


def _processed_weights(block: nn.Module, target: str) -> bool:
    """Whether a component on the path to ``target`` computes from processed weight copies
    (TransformerLens's compatibility mode: a gated MLP then calls ``F.linear`` itself)."""
    module, parts = block, target.split(".")
    for part in parts:
        if getattr(module, "_use_processed_weights", False):
            return True
        module = getattr(module, part)
    return bool(getattr(module, "_use_processed_weights", False))


def _linear_components(block: nn.Module) -> list[str]:
    """The paths in ``block`` of the bridge components that wrap an nn.Linear: what to target."""
    # Every path, then the bridge's own: deduplicated, a component is often first reached
    # through the Hugging Face module (``_original_component.self_attn.q``).
    return [
        name
        for name, module in block.named_modules(remove_duplicate=False)
        if _WRAPPED not in name and isinstance(module._modules.get(_WRAPPED), nn.Linear)
    ]


def _is_lora_layer(module: nn.Module | None) -> bool:
    return module is not None and hasattr(module, "lora_A")


def _inject(
    peft: Any, model: Any, linears: list[nn.Module], rank: int, alpha: float, dropout: float
) -> list[nn.Module]:
    """PEFT's LoRA layers around ``linears``, in their order; the model changed in place.

    PEFT matches modules by their name in ``model.named_modules()``. A bridge reaches each
    Linear by several paths (``blocks.0.mlp.gate._original_component`` and the wrapped Hugging
    Face model's own), so each is named here by the one path PEFT will see, exactly.
    """
    name_of = {id(module): name for name, module in model.named_modules()}
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=[name_of[id(linear)] for linear in linears],
        bias="none",
    )
    peft.tuners.lora.LoraModel(model, config, adapter_name="default")
    layers = [model.get_submodule(name_of[id(linear)]) for linear in linears]
    for layer, linear in zip(layers, linears, strict=True):
        if getattr(layer, "base_layer", None) is not linear:
            raise NeuroplasticError(
                f"lora_adapters: PEFT {peft.__version__} did not wrap {name_of[id(linear)]} "
                "as expected; report this with your peft version"
            )
    return layers


def _own_parameters(layer: nn.Module) -> list[nn.Parameter]:
    """A LoRA layer's adapter parameters: all of its own, less the base layer's."""
    base = {id(p) for p in layer.base_layer.parameters()}
    return [p for p in layer.parameters() if id(p) not in base]


def _train_only(model: Any, parameters: list[nn.Parameter]) -> None:
    """``requires_grad`` on ``parameters`` alone.

    PEFT freezes the base itself, matching parameter names against module names; a bridge's
    ``named_parameters()`` are the wrapped model's names, not its module paths, so PEFT froze
    the adapters too. Set here by identity instead.
    """
    trainable = {id(p) for p in parameters}
    reachable = {id(p) for p in model.parameters()}
    if not trainable <= reachable:
        raise NeuroplasticError(
            "lora_adapters: the adapters are not among model.parameters(), so training would "
            "not see them; report this with your transformer-lens and peft versions"
        )
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
