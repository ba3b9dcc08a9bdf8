"""The settings of a facts study (``neuroplastic facts``): which facts are removed, how, and how
the retrainer tries to bring them back. Free of torch, so that ``--help`` answers at once; the
study itself is :mod:`neuroplastic.experiment.facts_study`."""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from neuroplastic.errors import NeuroplasticError
from neuroplastic.settings import NON_NEGATIVE, POSITIVE, Bound, setting

#: What the retrainer trains on after the removal, for the same number of steps:
#: ``heldout`` the forget facts of T only, tested on V (RTT, Deeb & Roger 2024); ``unrelated``
#: text with no fact in it (Łucki et al. 2024); ``retain`` the retain facts only; ``same`` the
#: forget facts of T and V, V among them (the paper's relearning: what comes back when the
#: removed facts themselves are taught again).
PROTOCOLS: tuple[str, ...] = ("heldout", "unrelated", "retain", "same")
#: The protocols a study runs unless told: the three that never train on V.
DEFAULT_PROTOCOLS: tuple[str, ...] = ("heldout", "unrelated", "retain")
#: The arms of one seed, paired: the removal, its control, and no removal at all (what
#: retraining teaches by itself).
ARMS: tuple[str, ...] = ("removal", "control", "none")
#: Held by hooks: ``neurons`` (the ranked top fraction at zero), ``leace`` and ``direction``
#: (an eraser at every layer). Edited into the weights: ``graddiff`` (gradient difference) and
#: ``rmu`` (:mod:`neuroplastic.core.unlearning`).
REMOVALS: tuple[str, ...] = ("neurons", "leace", "direction", "graddiff", "rmu")
#: How the retrainer changes the model: every weight (``full``), or low-rank adapters on every
#: attention and MLP projection (``lora``, through PEFT), the removal held either way.
ADAPTERS: tuple[str, ...] = ("full", "lora")
#: The removals that fine-tune the weights; their control is the same method on as many known
#: facts of the forget relation, held out from T and V (``held_out``).
WEIGHT_EDITS: tuple[str, ...] = ("graddiff", "rmu")
FACT_RANKERS: tuple[str, ...] = ("selectivity", "ratio", "smd", "probeless")
#: What a seed's split of the known facts into T, V and held-out depends on, beside the seed:
#: the model and fact pool (which facts are known), the cap on them, the relation removed and
#: the held-out share (:class:`neuroplastic.experiment.facts_data.StudyData`). Studies that
#: agree on these ask the same V per seed, so they pair seed by seed.
SPLIT_SETTINGS: tuple[str, ...] = ("model", "n_cities", "max_facts", "forget_relation", "held_out")
#: The relations of :mod:`neuroplastic.data.facts` (which imports torch; a test keeps the two
#: the same).
RELATIONS: tuple[str, ...] = ("capital_of", "country_of")


#: What a run recorded before a setting existed did: read a missing setting as this, not as
#: today's default (weight edits kept every retain fact before ``edit_retain``).
BEFORE_THE_SETTING: dict[str, object] = {"edit_retain": "all"}


def facts_setting(
    default: Any,
    help: str = "",
    unit: str | None = None,
    bound: Bound | None = None,
    *,
    flag: str | None = "",
    item: str = "",
    example: str = "",
) -> Any:
    """A field of :class:`FactsConfig`: :func:`~neuroplastic.settings.setting` (``help``,
    ``unit`` the metavar, ``bound``; a ``Literal`` type names the choices) with what a facts
    flag may need beside. ``flag``: the flag's name where it is not the setting's (``lr`` for
    ``learning_rate``), None where the setting has no flag. A ``tuple`` setting is given
    comma-separated: ``item`` is what one of its values is called when refused, ``example``
    a list shown when a value is empty. `--help` shows ``help`` and ``(default: ...)`` after
    it, unless ``help`` says its default itself."""
    declared = setting(default, help=help, unit=unit, bound=bound)
    extra = {"flag": flag, "item": item, "example": example}
    return field(default=default, metadata={**declared.metadata, **extra})


@dataclass(frozen=True)
class FactsConfig:
    """One seed of a facts study. The defaults are the SmolLM2 study's: 2% of the MLP neurons
    by the forget/retain activation ratio at the recall positions (selectivity, at 0.5-5%, took
    capitals no more than its random control did), 30 retraining steps of 8 sentences at 3e-5
    under each protocol. Each field declares its flag (:func:`facts_setting`); the field order
    is config.json's."""

    model: str = facts_setting("smollm2", "a decoder", "MODEL")
    forget_relation: Literal[RELATIONS] = facts_setting(
        "capital_of", "the relation removed; the other is retained"
    )
    removal: Literal[REMOVALS] = facts_setting(
        "neurons",
        "neurons (held at zero), an eraser held at every layer (leace, direction), or a weight "
        "edit: gradient difference (graddiff) or RMU (rmu), whose control unlearns held-out "
        "facts, so give --held-out",
    )
    method: Literal[FACT_RANKERS] = facts_setting(
        "ratio", "how neurons are ranked, forget against retain"
    )
    fraction: float = facts_setting(
        0.02, "share of all MLP neurons removed", "FRACTION", Bound(low=0, high=1, low_open=True)
    )
    protocols: tuple[Literal[PROTOCOLS], ...] = facts_setting(
        DEFAULT_PROTOCOLS,
        "protocols: heldout (forget-T facts), unrelated (text with no fact), retain (the other "
        "relation's facts), same (forget-T and V) (default: the first three)",
        "P,...",
        flag="relearn",
        item="protocol",
        example="heldout,unrelated",
    )
    steps: int = facts_setting(30, "retraining steps under each protocol", "STEPS", POSITIVE)
    learning_rate: float = facts_setting(
        3e-5, "retraining learning rate", "RATE", POSITIVE, flag="lr"
    )
    best_case_lrs: tuple[float, ...] = facts_setting(
        (),
        "more retraining learning rates: every arm also retrains at each, and each seed's best "
        "V over all rates is reported, chosen after the fact",
        "RATE,...",
        item="learning rate",
        example="1e-5,1e-4",
    )
    relearn_adapter: Literal[ADAPTERS] = facts_setting(
        "full", "retrain every weight (full) or LoRA adapters only"
    )
    lora_rank: int = facts_setting(8, "the LoRA adapters' rank", "RANK", POSITIVE)
    best_case_adapters: tuple[Literal[ADAPTERS], ...] = facts_setting(
        (),
        "more retrainer tools for the best case (full, lora), each at every learning rate",
        "TOOL,...",
        item="adapter",
        example="lora",
    )
    batch_size: int = facts_setting(8, "sentences a step", "N", POSITIVE)
    #: Gradient difference: AdamW steps at a constant rate on -loss(forget) + w * loss(retain),
    #: a batch of each a step, every weight trained; 1e-5 is open-unlearning's rate. The weight
    #: edits' defaults were chosen on SmolLM2 by benchmarks/facts_unlearning.py.
    graddiff_steps: int = facts_setting(30, "gradient difference's steps", "STEPS", POSITIVE)
    graddiff_lr: float = facts_setting(1e-5, "gradient difference's learning rate", "LR", POSITIVE)
    graddiff_retain_weight: float = facts_setting(
        1.0, "the weight of gradient difference's retain loss", "WEIGHT", NON_NEGATIVE
    )
    #: RMU at ``rmu_layer``'s residual stream, updating the MLPs of ``rmu_updated_layers``
    #: (WMDP: layer 7 of Zephyr-7B's 32, updating 5-7). The steering norm c is
    #: ``rmu_steering`` times the unedited model's mean residual norm there on the forget
    #: facts: one setting across models whose residual scales differ (WMDP re-tuned its
    #: absolute c per model). ``rmu_alpha`` weighs keeping the retain facts' residual. WMDP's
    #: 5e-5 over 150 steps barely moved SmolLM2's capitals in 30; 1e-3 at 2x took V to about
    #: 0.57 with the retain facts whole.
    rmu_layer: int = facts_setting(7, "the layer whose residual RMU steers", "LAYER", NON_NEGATIVE)
    rmu_updated_layers: tuple[int, ...] = facts_setting(
        (5, 6, 7),
        "the layers whose MLPs RMU updates",
        "LAYERS",
        item="layer number",
        example="5,6,7",
    )
    rmu_steering: float = facts_setting(
        2.0, "RMU's steering norm, in mean residual norms at its layer", "STEERING", POSITIVE
    )
    rmu_alpha: float = facts_setting(
        100.0, "the weight of RMU's retain loss", "ALPHA", NON_NEGATIVE
    )
    rmu_steps: int = facts_setting(30, "RMU's steps", "STEPS", POSITIVE)
    rmu_lr: float = facts_setting(1e-3, "RMU's learning rate", "LR", POSITIVE)
    edit_retain: Literal["unasked", "all"] = facts_setting(
        "unasked",
        "the retain facts a weight edit keeps: those never asked (unasked), so the retain cost "
        "is out of sample, or all (runs made before this setting)",
    )
    unrelated_sentences: int = facts_setting(
        0,
        "retrain unrelated on N seeded sentences, cycled; 0: all of them (default)",
        "N",
        NON_NEGATIVE,
    )
    n_cities: int = facts_setting(300, "cities in the fact pool", flag=None)
    #: Measured at base too (does a removal spill over to facts it did not target?); a weight
    #: edit's control needs them.
    held_out: float = facts_setting(
        0.0,
        "share of the forget relation's known facts set aside from T and V: measured after each "
        "removal, and unlearned by a weight edit's control (default: 0)",
        "SHARE",
        Bound(low=0, high=1, high_open=True),
    )
    #: A small study for tests and trials.
    max_facts: int = facts_setting(
        0, "known facts kept per relation, 0: all (default)", "N", Bound(low=0, note="all")
    )
    #: A stable-hash subset; all are trained on under ``retain``.
    retain_questions: int = facts_setting(100, "retain facts asked at each state", "N", POSITIVE)
    #: Embedded-corpus sentences with no location, held out from every retraining.
    general_sentences: int = facts_setting(
        64, "held-out sentences of the general-ability loss", "N", POSITIVE
    )
    max_length: int = facts_setting(48, "tokens per sentence", "TOKENS", flag=None)
    seed: int = facts_setting(0, "the seed of this study's split and draws", flag=None)
    device: str = facts_setting("cpu", "cpu, cuda or mps", "DEVICE")

    def __post_init__(self) -> None:
        checks = [
            *self._declared_checks(),
            (
                bool(self.protocols) and set(self.protocols) <= set(PROTOCOLS),
                f"protocols must be some of {', '.join(PROTOCOLS)}",
            ),
            (
                all(lr > 0 for lr in self.best_case_lrs)
                and len(set(self.best_case_lrs)) == len(self.best_case_lrs)
                and self.learning_rate not in self.best_case_lrs,
                "best_case_lrs must be distinct positive rates other than learning_rate",
            ),
            (
                set(self.best_case_adapters) <= set(ADAPTERS)
                and len(set(self.best_case_adapters)) == len(self.best_case_adapters)
                and self.relearn_adapter not in self.best_case_adapters,
                f"best_case_adapters must be distinct tools of {ADAPTERS} other than "
                "relearn_adapter",
            ),
            (
                bool(self.rmu_updated_layers)
                and min(self.rmu_updated_layers) >= 0
                and max(self.rmu_updated_layers) <= self.rmu_layer,
                "rmu_updated_layers must be layers at or before rmu_layer",
            ),
            (
                self.removal not in WEIGHT_EDITS or self.held_out >= 0.5,
                f"the {self.removal} removal's control unlearns as many held-out facts as T "
                "and V hold: give a held_out share of 0.5 or more",
            ),
            (self.max_length >= 8, "max_length must be at least 8 tokens"),
        ]
        for ok, message in checks:
            if not ok:
                raise NeuroplasticError(f"facts study: {message}")
        if len(set(self.protocols)) != len(self.protocols):
            raise NeuroplasticError(f"facts study: protocols repeat: {self.protocols}")

    def _declared_checks(self) -> list[tuple[bool, str]]:
        """Each setting's declared choices and bound, in field order: the settings of
        :data:`CHECKED_TOGETHER` in one check that names them all."""
        checks = []
        for names in dict.fromkeys(_checked_with(f.name) for f in fields(self)):
            first = names[0]
            if first in SETTING_CHOICES:
                allowed = SETTING_CHOICES[first]
                checks.append(
                    (getattr(self, first) in allowed, f"{first} must be {_either(allowed)}")
                )
            bound = _DECLARED[first].metadata["bound"]
            if bound is not None:
                within = all(bound.admits(getattr(self, name)) for name in names)
                worded = _wording(bound, whole=_HINTS[first] is int)
                checks.append((within, f"{_joined(names)} must be {worded}"))
        return checks

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self).items()
        return {name: list(v) if name in LIST_SETTINGS else v for name, v in values}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FactsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NeuroplasticError(f"facts study: unknown settings {unknown}")
        return cls(**{name: tuple(v) if name in LIST_SETTINGS else v for name, v in values.items()})


_DECLARED: dict[str, Field] = {f.name: f for f in fields(FactsConfig)}
_HINTS: dict[str, Any] = get_type_hints(FactsConfig)
#: Each string setting's choices (its ``Literal`` type): checked when a config is made, and
#: the flag's choices.
SETTING_CHOICES: dict[str, tuple[str, ...]] = {
    name: get_args(hint) for name, hint in _HINTS.items() if get_origin(hint) is Literal
}
#: The settings of several values (a ``tuple`` type): lists in config.json, comma-separated
#: on the command line.
LIST_SETTINGS: tuple[str, ...] = tuple(
    name for name, hint in _HINTS.items() if get_origin(hint) is tuple
)
#: The weight edits' settings that share a bound and are refused in one message naming them.
CHECKED_TOGETHER: tuple[tuple[str, ...], ...] = (
    ("graddiff_steps", "rmu_steps"),
    ("graddiff_lr", "rmu_lr", "rmu_steering"),
    ("graddiff_retain_weight", "rmu_alpha"),
)


def _checked_with(name: str) -> tuple[str, ...]:
    return next((group for group in CHECKED_TOGETHER if name in group), (name,))


def _either(allowed: tuple[str, ...]) -> str:
    return " or ".join(allowed) if len(allowed) == 2 else f"one of {', '.join(allowed)}"


def _joined(names: tuple[str, ...]) -> str:
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def _wording(bound: Bound, whole: bool) -> str:
    """A bound as the facts study's refusals word it: ``in (0, 1]``, ``positive`` (``at
    least 1`` for a whole number), ``0 or more`` (``0 (all) or more`` with its note)."""
    if bound.high is not None or bound.low is None:
        return bound.describe()
    if bound.low_open:
        return ("at least 1" if whole else "positive") if bound.low == 0 else bound.describe()
    note = f" ({bound.note})" if bound.note else ""
    return f"{bound.low:g}{note} or more"


def flag_of(name: str) -> str | None:
    """The flag of setting ``name`` (``--lr`` for ``learning_rate``), None if it has none."""
    flag = _DECLARED[name].metadata["flag"]
    return None if flag is None else "--" + (flag or name).replace("_", "-")
