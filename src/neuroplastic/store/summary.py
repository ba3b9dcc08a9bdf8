"""``summary.json`` as a type: what a finished run recorded, read by the sweep, the report and
the CLI through :class:`Summary` instead of by key.

The file is built by :mod:`neuroplastic.experiment.summary` and written once, when every stage
is done; this module gives its shape names and reads it back. A :class:`Summary` round-trips: its
:meth:`Summary.to_dict` is the file's JSON object, key for key and in the same order (a test
checks it on real runs), so the file stays exactly what runs before this type wrote.

What is typed and what is not: the run's top level (:class:`Summary`), each arm
(:class:`ArmSummary`) and each stage's record (:class:`StageRecord`) have fields; the sections
that one analysis writes and one reads (``chase``, ``preempt``, ``savings``, ``relearn``, the
predictors' ``prediction`` rows, ``causal``) stay JSON objects, described where they are built.
A run made before a key existed reads it as ``None`` (or empty), never as a made-up value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuroplastic.config import CONCEPT_ARM
from neuroplastic.store.rundir import RunDir, read_run_file

#: the evaluation row's fields a stage record keeps apart; the rest are its scores
_GAPS = ("gap_to_base", "gap_to_control")


@dataclass(frozen=True)
class StageRecord:
    """One stage's end: its evaluation (``stage``, ``step``, then the row's scores in file
    order: ``f1``/``precision``/``recall`` per entity type for NER or ``lm_loss`` per kind of
    token for LM, ``train_loss``, per-layer ``readable`` where probed) and its gaps: score minus
    the arm's base score, and (concept and pre-empting arms) minus the paired control's at the
    same stage."""

    stage: str
    step: int
    scores: dict[str, Any]
    gap_to_base: dict[str, float] | None = None
    gap_to_control: dict[str, float] | None = None

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> StageRecord:
        scores = {k: v for k, v in entry.items() if k not in ("stage", "step", *_GAPS)}
        return cls(entry["stage"], entry["step"], scores, entry.get(_GAPS[0]), entry.get(_GAPS[1]))

    def to_dict(self) -> dict[str, Any]:
        gaps = {"gap_to_base": self.gap_to_base, "gap_to_control": self.gap_to_control}
        return {
            "stage": self.stage,
            "step": self.step,
            **self.scores,
            **{k: v for k, v in gaps.items() if v is not None},
        }

    def score(self, metric: str) -> dict[str, float]:
        """``metric`` (``f1``, ``precision``, ``recall`` or ``lm_loss``) per entity type."""
        return self.scores[metric]

    @property
    def f1(self) -> dict[str, float]:
        return self.scores["f1"]

    @property
    def readable(self) -> dict[str, Any] | None:
        """Where a linear probe reads the concept, per layer (None: not probed, or older)."""
        return self.scores.get("readable")

    @property
    def probes(self) -> dict[str, Any] | None:
        """Every probe reading per point and layer, with the split it used
        (:func:`neuroplastic.experiment.stages._readability`; None in older runs, whose
        probes were fitted on the probe sentences)."""
        return self.scores.get("probes")


@dataclass(frozen=True)
class ArmSummary:
    """One arm: the neurons it held, its stage records, and what the arm is.

    ``removal`` (a linear erasure's kind, layers, rank, description) is set for a run whose
    removal is not neurons; ``overlap_with_concept`` (neurons shared with the concept arm's set)
    for a neuron removal's other arms; ``control`` (how the random arm's set was drawn, or
    ``matched-projection``: matched in removed variance; ``random-projection`` in older runs)
    for the random arm; ``recovery``
    (:func:`neuroplastic.core.curves.recovery` of round 1) for every NER arm that knew the
    concept at base."""

    neurons: int
    per_layer: dict[str, int]
    stages: list[StageRecord]
    removal: dict[str, Any] | None = None
    overlap_with_concept: int | None = None
    control: str | None = None
    recovery: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmSummary:
        return cls(
            neurons=data["neurons"],
            per_layer=data["per_layer"],
            stages=[StageRecord.from_dict(entry) for entry in data["stages"]],
            removal=data.get("removal"),
            overlap_with_concept=data.get("overlap_with_concept"),
            control=data.get("control"),
            recovery=data.get("recovery"),
        )

    def to_dict(self) -> dict[str, Any]:
        optional = {
            "removal": self.removal,
            "overlap_with_concept": self.overlap_with_concept,
            "control": self.control,
            "recovery": self.recovery,
        }
        return {
            "neurons": self.neurons,
            "per_layer": self.per_layer,
            "stages": [entry.to_dict() for entry in self.stages],
            **{k: v for k, v in optional.items() if v is not None},
        }

    def stage(self, name: str) -> StageRecord | None:
        return next((entry for entry in self.stages if entry.stage == name), None)


@dataclass(frozen=True)
class Steps:
    """Optimizer steps: the base fine-tuning's cap and each retraining stage's length."""

    base_cap: int
    per_stage: int


@dataclass(frozen=True)
class Summary:
    """A finished run. ``config`` is the run's settings (``ExperimentConfig.to_dict()``);
    ``data`` the split sizes and how many of the evaluation's mentions training saw; ``base``
    how base fine-tuning ended (steps, why it stopped); ``processes`` every process count the
    stages were computed with, only when launched on several. The sections ``prediction``,
    ``causal``, ``chase``, ``preempt``, ``relearn`` and ``savings`` are there when the run's
    settings made them (their builders in :mod:`neuroplastic.experiment.summary` say what they
    hold)."""

    config: dict[str, Any]
    arms: dict[str, ArmSummary]
    data: dict[str, Any] | None = None
    steps: Steps | None = None
    base: dict[str, Any] | None = None
    prediction: list[dict[str, Any]] | None = None
    causal: dict[str, Any] | None = None
    processes: list[int] | None = None
    chase: dict[str, Any] | None = None
    preempt: dict[str, Any] | None = None
    relearn: dict[str, Any] | None = None
    savings: dict[str, Any] | None = None

    # -- reading and writing -------------------------------------------------------------------
    @classmethod
    def read(cls, run: RunDir) -> Summary:
        """The run's ``summary.json``; one that is not a summary is a :class:`CorruptFile` that
        says how to get it back (rerun the command)."""
        data = run.summary()
        return read_run_file(
            run.summary_path, lambda _: cls.from_dict(data), run.recomputed_by_rerun()
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        steps = data.get("steps")
        return cls(
            config=data["config"],
            arms={arm: ArmSummary.from_dict(entry) for arm, entry in data["arms"].items()},
            data=data.get("data"),
            steps=Steps(steps["base_cap"], steps["per_stage"]) if steps else None,
            base=data.get("base"),
            prediction=data.get("prediction"),
            causal=data.get("causal"),
            processes=data.get("processes"),
            chase=data.get("chase"),
            preempt=data.get("preempt"),
            relearn=data.get("relearn"),
            savings=data.get("savings"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``summary.json``, in its key order."""
        steps = self.steps and {"base_cap": self.steps.base_cap, "per_stage": self.steps.per_stage}
        head = {"config": self.config, "data": self.data, "steps": steps, "base": self.base}
        tail = {
            "prediction": self.prediction,
            "causal": self.causal,
            "processes": self.processes,
            "chase": self.chase,
            "preempt": self.preempt,
            "relearn": self.relearn,
            "savings": self.savings,
        }
        return {
            **{k: v for k, v in head.items() if v is not None},
            "arms": {arm: entry.to_dict() for arm, entry in self.arms.items()},
            **{k: v for k, v in tail.items() if v is not None},
        }

    # -- what readers ask ----------------------------------------------------------------------
    @property
    def concept(self) -> str:
        return self.config["concept"]

    @property
    def metric(self) -> str:
        """The stages' score: ``f1`` for NER, ``lm_loss`` for LM (older runs: NER)."""
        return "lm_loss" if self.config.get("task") == "lm" else "f1"

    def base_scores(self, arm: str = CONCEPT_ARM) -> dict[str, float]:
        """The metric per entity type at ``arm``'s base stage (empty: not recorded)."""
        entry = self.arms.get(arm)
        base = entry.stage("base") if entry else None
        return dict(base.scores.get(self.metric, {})) if base else {}

    @property
    def retraining_steps(self) -> int:
        """One round's retraining steps: what a round that never recovers is censored at."""
        if self.steps is None:
            raise KeyError("this summary records no step counts (made before they existed)")
        return self.steps.per_stage * self.config["stages"]
