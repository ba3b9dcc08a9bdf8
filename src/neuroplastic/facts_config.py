"""The settings of a facts study (``neuroplastic facts``): which facts are removed, how, and how
the retrainer tries to bring them back. Free of torch, so that ``--help`` answers at once; the
study itself is :mod:`neuroplastic.experiment.facts_study`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from neuroplastic.errors import NeuroplasticError

#: What the retrainer trains on after the removal, for the same number of steps:
#: ``heldout`` the forget facts of T only, tested on V (RTT, Deeb & Roger 2024); ``unrelated``
#: text with no fact in it (Łucki et al. 2024); ``retain`` the retain facts only.
PROTOCOLS: tuple[str, ...] = ("heldout", "unrelated", "retain")
#: The arms of one seed, paired: the ranked neurons held, their random control (as many
#: neurons, layer by layer) held, and no removal at all (what retraining teaches by itself).
ARMS: tuple[str, ...] = ("removal", "control", "none")
REMOVALS: tuple[str, ...] = ("neurons", "leace", "direction")
FACT_RANKERS: tuple[str, ...] = ("selectivity", "ratio", "smd", "probeless")
#: The relations of :mod:`neuroplastic.data.facts` (which imports torch; a test keeps the two
#: the same).
RELATIONS: tuple[str, ...] = ("capital_of", "country_of")


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
    protocols: tuple[str, ...] = PROTOCOLS
    steps: int = 30
    learning_rate: float = 3e-5
    #: More retraining learning rates, for the retrainer's best case: every protocol's arms
    #: also retrain at each, and each seed's best V over all of them is reported beside the
    #: main learning rate's, labelled as chosen after the fact.
    best_case_lrs: tuple[float, ...] = ()
    batch_size: int = 8
    #: Unrelated sentences retrained on, cycled for the steps: 0 every one (the unrelated set),
    #: N a seeded N of them (Łucki et al.'s handful).
    unrelated_sentences: int = 0
    n_cities: int = 300
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
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.unrelated_sentences >= 0, "unrelated_sentences must be 0 or more"),
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
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FactsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NeuroplasticError(f"facts study: unknown settings {unknown}")
        values = dict(values)
        for name in ("protocols", "best_case_lrs"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)
