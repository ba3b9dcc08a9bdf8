"""What a resumption does about run files that cannot be read (truncated, garbage): recompute
them where the run kept what they are computed from, and say so; refuse, in one line, where it
did not.

Checked before any compute, on what :meth:`Checkpointer.check_config` found (the pipeline calls
:func:`recover`):

```
file that cannot be read                  recomputed from                        else
stages/{arm}/{stage}/*                    the weights after the stage (state/ or  refused
                                          checkpoints/), by taking its statistics
                                          again; else, not the base, as below
state/{arm}/{stage}.* (a marker,          the base weights: the arm's stages are  refused
  weights or trainer state; not the base)   computed again (no stage is skipped)
state/concept/base.*                      -                                       refused
checkpoints/{arm}/{stage}.safetensors     - (the run does not read it)            a warning
summary.json, metrics.jsonl,              the stages' records, the base ranking,  -
  neurons/{arm}.json, sentences.json,       the probe sentences and the model,
  token_embeddings.safetensors              as every run rewrites them
config.json                               see Checkpointer.check_config
```

A file the manifest lists but that is gone (deleted after the run wrote it) is treated as one
that cannot be read: recomputed from what the run kept while it still keeps it (an unfinished
run's weights, or --save-checkpoints'), else said so in one line per stage: a finished run goes
on without it (its report leaves the stage out), and the base stage or base weights, which every
other stage comes from, are refused. Nothing is skipped silently.

A file that can be read but is not the one the run wrote (its manifest entry differs) is never
recomputed: it may be a deliberate edit, or another run's file, so it is refused by name
(:meth:`Manifest.verify`) and the user decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuroplastic.config import CONCEPT_ARM, ExperimentConfig
from neuroplastic.core.halves import HALVES_FILE
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.manifest import CorruptFile
from neuroplastic.store.rundir import STAGE_FILES, RunDir, file_owner, stage_names, unreadable

if TYPE_CHECKING:
    from neuroplastic.store.checkpoint import Checkpointer


@dataclass
class Recompute:
    """Statistics, ranking and top tokens of ``stage`` of ``arm``, to take again from the
    model with ``weights`` (the weights after the stage) loaded."""

    arm: str
    stage: str
    weights: Path


@dataclass
class Recovery:
    """What a resumption found: a warning per file it recomputes, and the stages whose files
    the experiment must recompute (base first)."""

    warnings: list[str] = field(default_factory=list)
    stages: list[Recompute] = field(default_factory=list)


def recover(
    store: Checkpointer,
    config: ExperimentConfig,
    markers: dict[Path, str],
    lost: list[Path] = (),  # type: ignore[assignment]
) -> Recovery:
    """Check the run's files (``markers``: the stage markers that cannot be read, with why;
    ``lost``: those deleted while a later stage of their arm is done);
    forget the arms that must be computed again and rewrite metrics.jsonl at once; return the
    rest. Raises :class:`CorruptFile` for the first file nothing can recompute, before any
    change."""
    run, recovery = store.run, Recovery()
    unreadable, missing = _damaged_listed_files(store)
    missing += lost
    damaged = {**markers, **unreadable}
    # Hashed only when needed: the base weights are the largest file a run keeps.
    base_weights = run.saved_weights(CONCEPT_ARM, "base") if damaged or missing else None
    forget: set[str] = set()
    recompute: dict[tuple[str, str], Recompute] = {}
    _missing_files(run, missing, base_weights, recovery, forget, recompute)
    for path, reason in sorted(damaged.items()):
        kind, arm, stage = _owner(run, path)
        found = f"{path} is corrupt or truncated ({reason})"
        if kind == "checkpoint":
            recovery.warnings.append(
                f"{found}; the run does not read it: delete it, or rerun into a new --out to "
                "have it again"
            )
            continue
        weights = run.saved_weights(arm, stage) if kind == "stage" else None
        if weights is not None:
            recompute[arm, stage] = Recompute(arm, stage, weights)
            recovery.warnings.append(
                f"{found}; recomputing stage {stage} of the {arm} arm from "
                f"{run.manifest.relative(weights)}"
            )
        elif stage not in ("base", None) and base_weights is not None:
            forget.add(arm)
            recovery.warnings.append(
                f"{found}; recomputing the {arm} arm from the base weights "
                f"({run.manifest.relative(base_weights)}): its stages are computed again"
            )
        else:
            raise CorruptFile(path, reason, _unrecoverable(run, path, kind, arm, stage))
    for arm in sorted(forget):
        _forget_arm(store, arm, config.stages, config.rounds)
    recovery.stages = sorted(
        (r for r in recompute.values() if r.stage == "base" or r.arm not in forget),
        key=lambda r: (r.stage != "base", r.arm),
    )
    recovery.warnings += _derived_files(store, config, rewrite_metrics=bool(forget))
    return recovery


def _damaged_listed_files(store: Checkpointer) -> tuple[dict[Path, str], list[Path]]:
    """The manifest's files that differ from their entries and cannot be read, with why, and
    those that are gone (deleted after the run wrote them). One that differs but can be read is
    refused here (not the run's file, by name)."""
    manifest = store.manifest
    entries = manifest.entries()
    damaged, missing = {}, []
    for name in entries or {}:
        path = store.run.path / name
        if not path.is_file():
            missing.append(path)
            continue
        if manifest.matches(path, entries):
            continue
        reason = unreadable(path)
        if reason is None:
            manifest.verify(path, entries)  # raises: readable, but not the file the run wrote
        damaged[path] = reason
    return damaged, missing


def _missing_files(
    run: RunDir,
    missing: list[Path],
    base_weights: Path | None,
    recovery: Recovery,
    forget: set[str],
    recompute: dict[tuple[str, str], Recompute],
) -> None:
    """Decide about the listed files that are gone, one stage (or one other file) at a time:
    recompute them from the weights the run kept (``recompute``, ``forget``: an arm computed
    again from its base weights), else say what is lost (a warning), else refuse (the base, which
    every other stage comes from). Raises before any change."""
    finished = run.summary_path.is_file()
    groups: dict[tuple[str, str, str | None], list[Path]] = {}
    for path in sorted(missing):
        groups.setdefault(_owner(run, path), []).append(path)
    for (kind, arm, stage), paths in groups.items():
        names = ", ".join(str(p) for p in paths)
        one = len(paths) == 1
        found = (
            f"{names} {'is' if one else 'are'} missing, though the run's manifest lists "
            f"{'it' if one else 'them'} (deleted after the run wrote {'it' if one else 'them'})"
        )
        again = f"restore {'it' if one else 'them'}, or rerun into a new --out"
        if kind == "state" and any(p.suffix == ".json" for p in paths):  # a stage marker
            found = (
                f"{names} is missing (deleted after the run wrote it), though later stages of "
                f"the {arm} arm are recorded"
            )
            if stage != "base" and base_weights is not None and not finished:
                forget.add(arm)
                recovery.warnings.append(
                    f"{found}; recomputing the {arm} arm from the base weights "
                    f"({run.manifest.relative(base_weights)}): its stages are computed again"
                )
                continue
            held = (
                "the fine-tuned base model every later stage builds on"
                if stage == "base"
                else ("its stage's evaluation")
            )
            raise NeuroplasticError(
                f"{found}; it recorded {held}, which cannot be recomputed from what the run "
                f"keeps; {again}"
            )
        if kind == "checkpoint" or (kind == "state" and finished and stage != "base"):
            recovery.warnings.append(
                f"{found}; the run does not read {'it' if one else 'them'} any more: "
                f"{again} to have {'it' if one else 'them'} again"
            )
            continue
        if kind == "state" and stage == "base":
            if finished:  # kept for a sweep's next cells only
                recovery.warnings.append(
                    f"{found}; the finished run does not read {'it' if one else 'them'}, but "
                    f"no later run can share its base weights: {again} to have them again"
                )
                continue
            raise NeuroplasticError(
                f"{found}; {'it holds' if one else 'they hold'} the fine-tuned base model every "
                "later stage builds on, which cannot be recomputed without starting over; "
                f"{again}"
            )
        weights = run.saved_weights(arm, stage) if kind == "stage" and stage else None
        if weights is not None:
            recompute[arm, stage] = Recompute(arm, stage, weights)  # type: ignore[index]
            recovery.warnings.append(
                f"{found}; recomputing stage {stage} of the {arm} arm from "
                f"{run.manifest.relative(weights)}"
            )
        elif kind in ("stage", "state") and stage != "base" and base_weights is not None:
            forget.add(arm)
            recovery.warnings.append(
                f"{found}; recomputing the {arm} arm from the base weights "
                f"({run.manifest.relative(base_weights)}): its stages are computed again"
            )
        elif kind == "stage" and stage != "base" and finished:
            recovery.warnings.append(
                f"{found}; {'it' if one else 'they'} cannot be rebuilt: the run no longer keeps "
                "the weights after that stage (--save-checkpoints keeps them), so its report "
                f"leaves stage {stage} of the {arm} arm out; {again} to have "
                f"{'it' if one else 'them'} again"
            )
        elif kind == "other" and base_weights is not None:
            recovery.warnings.append(
                f"{found}; recomputing {'it' if one else 'them'} from the base weights "
                f"({run.manifest.relative(base_weights)})"
            )
        else:
            what = (
                "the neuron sets come from it"
                if kind == "stage"
                else "it cannot be recomputed from what the run keeps"
            )
            raise NeuroplasticError(
                f"{found}; the run no longer keeps the weights to recompute "
                f"{'it' if one else 'them'} from (--save-checkpoints keeps them), and {what}; "
                f"{again}"
            )


def _owner(run: RunDir, path: Path) -> tuple[str, str, str | None]:
    """(``stage``, ``state``, ``checkpoint`` or ``other``; arm; stage) of a run file."""
    return file_owner(run.manifest.relative(path)) or ("other", "", None)


def _unrecoverable(run: RunDir, path: Path, kind: str, arm: str, stage: str | None) -> str:
    if kind == "state" and stage == "base":
        held = "record of the " if path.suffix == ".json" else ""
        return (
            f"it holds the {held}fine-tuned base model every later stage builds on, which "
            "cannot be recomputed without starting over; restore it, or rerun into a new --out"
        )
    if kind == "stage" and (arm, stage) == (CONCEPT_ARM, "base"):
        return (
            "the run no longer keeps the base weights to recompute it from (--save-checkpoints "
            "keeps them), and the neuron sets come from it; restore it, or rerun into a new "
            "--out"
        )
    if kind == "stage" and path.name == "predictions.safetensors":
        return (
            "its evaluation is kept in summary.json ('prediction'), but the scores cannot be "
            "computed again: a complete run keeps none of the weights they come from "
            "(--save-checkpoints keeps them). Restore the file, or rerun into a new --out to "
            "have it again"
        )
    if kind == "stage":
        return run.stage_remedy(arm, stage)
    return (
        "the run no longer keeps the weights to recompute it from (a complete run keeps "
        "none); restore it, or rerun into a new --out"
    )


def _forget_arm(store: Checkpointer, arm: str, n_stages: int, rounds: int) -> None:
    """Delete every stage of ``arm`` but the base (marker, weights, trainer state, stage
    files, checkpoint) and its manifest entries: the resumption computes them again."""
    run = store.run
    paths = []
    for stage in stage_names(n_stages, rounds)[1:]:
        paths += [run.stage_dir(arm, stage) / name for name in (*STAGE_FILES, HALVES_FILE)]
        paths += [run.marker_path(arm, stage), run.weights_path(arm, stage)]
        paths += [run.trainer_path(arm, stage), run.checkpoint_path(arm, stage)]
    store.delete(paths)


def _derived_files(
    store: Checkpointer, config: ExperimentConfig, rewrite_metrics: bool
) -> list[str]:
    """A warning per derived file that cannot be read (the run rewrites each of them);
    metrics.jsonl is rewritten here, from the stage markers, whenever it differs from them."""
    run = store.run
    sources: list[tuple[Path, Callable[[], Any], str]] = [
        (run.sentences_path, run.sentences, "the probe sentences"),
        (run.token_embeddings_path, run.token_embeddings, "the model's input embeddings"),
        *(
            (run.neurons_path(arm), partial(run.neurons, arm), "the base ranking")
            for arm in config.arms
        ),
        (run.summary_path, run.summary, "the stages' records"),
        (run.metrics_path, run.metrics_rows, "the stages' records"),
    ]
    warnings = []
    for path, read, source in sources:
        if not path.is_file():
            continue
        try:
            read()
        except CorruptFile as error:
            warnings.append(
                f"{path} is corrupt or truncated ({error.reason}); recomputing it from {source}"
            )
            rewrite_metrics |= path == run.metrics_path
            continue
        if path == run.metrics_path and path.read_bytes() != store.metrics_bytes(
            config.arms, config.stages, config.rounds
        ):
            # Readable but not what the markers say: cut at a line end, say, or edited.
            if not rewrite_metrics:  # (an arm computed again is said so already)
                warnings.append(
                    f"{path} does not hold exactly the evaluations the stages recorded; "
                    "rewriting it from them"
                )
            rewrite_metrics = True
    if rewrite_metrics and run.metrics_path.is_file():
        store.write_metrics(config.arms, config.stages, config.rounds)
    return warnings
