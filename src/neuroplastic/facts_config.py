"""The settings of a facts study (``neuroplastic facts``): which facts are removed, how, and how
the retrainer tries to bring them back. Free of torch, so that ``--help`` answers at once; the
study itself is :mod:`neuroplastic.experiment.facts_study`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from neuroplastic.errors import NeuroplasticError

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


@dataclass(frozen=True)
class FactsConfig:
    """One seed of a facts study. The defaults are the SmolLM2 study's: 2% of the MLP neurons
    by the forget/retain activation ratio at the recall positions (selectivity, at 0.5-5%, took
    capitals no more than its random control did), 30 retraining steps of 8 sentences at 3e-5
    under each protocol."""

    model: str = "smollm2"
    forget_relation: str = "capital_of"
    #: neurons: the ranking's top ``fraction`` of MLP neurons, held at zero; leace / direction:
    #: an eraser of forget against retain at the recall positions, held at every layer.
    removal: str = "neurons"
    method: str = "ratio"
    fraction: float = 0.02
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    steps: int = 30
    learning_rate: float = 3e-5
    #: More retraining learning rates, for the retrainer's best case: every protocol's arms
    #: also retrain at each, and each seed's best V over all of them is reported beside the
    #: main learning rate's, labelled as chosen after the fact.
    best_case_lrs: tuple[float, ...] = ()
    #: The retrainer's tool: ``full`` fine-tuning or ``lora`` adapters of rank ``lora_rank``.
    relearn_adapter: str = "full"
    lora_rank: int = 8
    #: More retrainer tools for the best case: every arm also retrains with each, at the main
    #: learning rate and at each of ``best_case_lrs``.
    best_case_adapters: tuple[str, ...] = ()
    batch_size: int = 8
    #: Gradient difference: AdamW steps at a constant rate on -loss(forget) + w * loss(retain),
    #: a batch of each a step, every weight trained; 1e-5 is open-unlearning's rate. The weight
    #: edits' defaults were chosen on SmolLM2 by benchmarks/facts_unlearning.py.
    graddiff_steps: int = 30
    graddiff_lr: float = 1e-5
    graddiff_retain_weight: float = 1.0
    #: RMU at ``rmu_layer``'s residual stream, updating the MLPs of ``rmu_updated_layers``
    #: (WMDP: layer 7 of Zephyr-7B's 32, updating 5-7). The steering norm c is
    #: ``rmu_steering`` times the unedited model's mean residual norm there on the forget
    #: facts: one setting across models whose residual scales differ (WMDP re-tuned its
    #: absolute c per model). ``rmu_alpha`` weighs keeping the retain facts' residual. WMDP's
    #: 5e-5 over 150 steps barely moved SmolLM2's capitals in 30; 1e-3 at 2x took V to about
    #: 0.57 with the retain facts whole.
    rmu_layer: int = 7
    rmu_updated_layers: tuple[int, ...] = (5, 6, 7)
    rmu_steering: float = 2.0
    rmu_alpha: float = 100.0
    rmu_steps: int = 30
    rmu_lr: float = 1e-3
    #: The retain facts a weight edit keeps: ``unasked`` those never asked at evaluation (so
    #: the retain accuracy is a held-out cost), ``all`` every one (the asked ones in-sample).
    edit_retain: str = "unasked"
    #: Unrelated sentences retrained on, cycled for the steps: 0 every one (the unrelated set),
    #: N a seeded N of them (Łucki et al.'s handful).
    unrelated_sentences: int = 0
    n_cities: int = 300
    #: The share of the forget relation's known facts set aside from T and V: measured at base
    #: and after each removal (does it spill over to facts it did not target?) and unlearned by
    #: a weight edit's control, which needs them.
    held_out: float = 0.0
    #: Known facts kept per relation, 0 all: a small study for tests and trials.
    max_facts: int = 0
    #: Retain facts asked at each evaluation (a stable-hash subset; all are trained on under
    #: ``retain``).
    retain_questions: int = 100
    #: Embedded-corpus sentences with no location, held out from every retraining, whose
    #: next-token loss is the general-ability measure.
    general_sentences: int = 64
    max_length: int = 48
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = [
            (self.forget_relation in RELATIONS, f"forget_relation must be one of {RELATIONS}"),
            (self.removal in REMOVALS, f"removal must be one of {', '.join(REMOVALS)}"),
            (self.method in FACT_RANKERS, f"method must be one of {', '.join(FACT_RANKERS)}"),
            (0 < self.fraction <= 1, "fraction must be in (0, 1]"),
            (
                bool(self.protocols) and set(self.protocols) <= set(PROTOCOLS),
                f"protocols must be some of {', '.join(PROTOCOLS)}",
            ),
            (self.steps >= 1, "steps must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (
                all(lr > 0 for lr in self.best_case_lrs)
                and len(set(self.best_case_lrs)) == len(self.best_case_lrs)
                and self.learning_rate not in self.best_case_lrs,
                "best_case_lrs must be distinct positive rates other than learning_rate",
            ),
            (self.relearn_adapter in ADAPTERS, f"relearn_adapter must be one of {ADAPTERS}"),
            (self.lora_rank >= 1, "lora_rank must be at least 1"),
            (
                set(self.best_case_adapters) <= set(ADAPTERS)
                and len(set(self.best_case_adapters)) == len(self.best_case_adapters)
                and self.relearn_adapter not in self.best_case_adapters,
                f"best_case_adapters must be distinct tools of {ADAPTERS} other than "
                "relearn_adapter",
            ),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (
                min(self.graddiff_steps, self.rmu_steps) >= 1,
                "graddiff_steps and rmu_steps must be at least 1",
            ),
            (
                min(self.graddiff_lr, self.rmu_lr, self.rmu_steering) > 0,
                "graddiff_lr, rmu_lr and rmu_steering must be positive",
            ),
            (
                min(self.graddiff_retain_weight, self.rmu_alpha) >= 0,
                "graddiff_retain_weight and rmu_alpha must be 0 or more",
            ),
            (
                bool(self.rmu_updated_layers)
                and min(self.rmu_updated_layers) >= 0
                and max(self.rmu_updated_layers) <= self.rmu_layer,
                "rmu_updated_layers must be layers at or before rmu_layer",
            ),
            (self.unrelated_sentences >= 0, "unrelated_sentences must be 0 or more"),
            (0 <= self.held_out < 1, "held_out must be in [0, 1)"),
            (
                self.removal not in WEIGHT_EDITS or self.held_out >= 0.5,
                f"the {self.removal} removal's control unlearns as many held-out facts as T "
                "and V hold: give a held_out share of 0.5 or more",
            ),
            (self.edit_retain in ("unasked", "all"), "edit_retain must be unasked or all"),
            (self.max_facts >= 0, "max_facts must be 0 (all) or more"),
            (self.retain_questions >= 1, "retain_questions must be at least 1"),
            (self.general_sentences >= 1, "general_sentences must be at least 1"),
            (self.max_length >= 8, "max_length must be at least 8 tokens"),
        ]
        for ok, message in checks:
            if not ok:
                raise NeuroplasticError(f"facts study: {message}")
        if len(set(self.protocols)) != len(self.protocols):
            raise NeuroplasticError(f"facts study: protocols repeat: {self.protocols}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["protocols"] = list(self.protocols)
        out["best_case_lrs"] = list(self.best_case_lrs)
        out["rmu_updated_layers"] = list(self.rmu_updated_layers)
        out["best_case_adapters"] = list(self.best_case_adapters)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FactsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NeuroplasticError(f"facts study: unknown settings {unknown}")
        values = dict(values)
        for name in (
            "protocols",
            "best_case_lrs",
            "rmu_updated_layers",
            "best_case_adapters",
        ):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)
