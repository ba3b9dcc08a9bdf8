"""All persistence of a run directory: its lock (:mod:`neuroplastic.store.lock`), its config,
which stages are done, the weights and trainer state after them, and the manifest that says
every file is the one the run wrote.

A stage is done when its marker exists. The marker is written last, after the stage's artifacts,
its weights and its trainer state (each written atomically) and the manifest entries of all of
them, so a run killed at any moment resumes from the last complete stage and ends with the same
summary. Only the base weights and the latest stage's of an arm are kept on disk (all
resumption needs), and none once the run is complete.

```
DIR/.lock                             flock'ed by the process writing the run (rank 0 of a
                                      launched run: the only one that touches DIR); its PID
                                      (neuroplastic.store.lock)
DIR/manifest.json                     relative path -> {"size", "sha256"} (store.manifest)
DIR/state/{arm}/{stage}.json          {"rows": [metric rows], "config_hash": ...}: stage done
DIR/state/{arm}/{stage}.safetensors   model and head weights after the stage
DIR/state/{arm}/{stage}.trainer.pt    optimizer and schedule state after the stage
```

Every marker records the hash of the settings its stage was computed under
(:meth:`ExperimentConfig.identity_hash`); a resumption under other settings, or of stages whose
config.json is gone, is refused. What a resumption reads (weights, trainer state, the base
ranking) is verified against the manifest first. Files that cannot be read at all are
recomputed where the run kept what they come from, else refused (:mod:`neuroplastic.store.repair`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from neuroplastic import distributed
from neuroplastic.config import RESUMABLE_FORMAT, RUN_FORMAT, ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes, atomic_write_json
from neuroplastic.store.lock import RunLock
from neuroplastic.store.manifest import (
    CONFIG_HASH,
    CorruptFile,
    digest,
    file_digest,
    run_format,
)
from neuroplastic.store.rundir import (
    STAGE_FILES,
    RunDir,
    file_owner,
    json_of,
    read_run_file,
    stage_names,
    stage_owner,
)

#: What a run leaves besides its inputs: with no config.json to check them against, any of
#: these makes a directory unusable for a new run.
RESULTS = (
    "state", "stages", "checkpoints", "neurons", "removals", "summary.json", "metrics.jsonl",
)  # fmt: skip


@dataclass
class MissingStage:
    """A stage of the run without complete artifacts: ``done`` if it was computed (its files
    were deleted since: ``files``, relative to the run directory), else never computed."""

    arm: str
    stage: str
    done: bool
    files: list[str]


@dataclass
class ConfigCheck:
    """What :meth:`Checkpointer.check_config` found: warnings to show, the stage markers
    that cannot be read (path -> why), and those deleted while a later stage of their arm is
    done (a marker is written last, so only a deletion leaves such a gap)."""

    warnings: list[str]
    unreadable: dict[Path, str]
    lost: list[Path] = field(default_factory=list)


class Checkpointer:
    """Use as ``with Checkpointer(run) as store:``: the run directory is locked inside."""

    def __init__(self, run: RunDir, save_checkpoints: bool = False) -> None:
        self.run = run
        self.save_checkpoints = save_checkpoints
        self.manifest = run.manifest
        self.config_hash: str | None = None
        self._lock: RunLock | None = None

    # -- the lock ------------------------------------------------------------------------------
    def __enter__(self) -> Checkpointer:
        self.lock()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unlock()

    def lock(self) -> None:
        """Take the run directory's exclusive lock, or refuse at once, naming its holder
        (:class:`neuroplastic.store.lock.RunLock`)."""
        if self._lock is not None:
            return
        if not distributed.is_main():  # the other ranks of a launched run only read from it
            raise RuntimeError(f"rank {distributed.rank()} may not lock or write {self.run.path}")
        self._lock = RunLock.take(self.run.path, self.run.lock_path)

    def unlock(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    # -- the config a run is bound to --------------------------------------------------------
    def check_config(self, config: ExperimentConfig) -> ConfigCheck:
        """Refuse to resume a run made with other settings (config.json, or the config hash
        of any done stage) or results whose config.json is gone or unreadable; sweep a
        crash's temporary files and bring the manifest in line with the done stages. Returns
        what it found: the warnings to show and the stage markers that cannot be read, which
        the caller hands to :func:`neuroplastic.store.repair.recover` (the store reports,
        the pipeline decides)."""
        if self._lock is None:
            raise RuntimeError("check_config needs the run's lock: `with Checkpointer(...)`")
        warnings = []
        data = None
        if self.run.config_path.is_file():
            try:
                data = self.run.config()
            except CorruptFile as error:
                problem = f"{self.run.config_path} is corrupt or truncated ({error.reason})"
                self._refuse_results(problem, "restore it")
                warnings.append(f"{problem}; no stage was computed under it: rewriting it")
        else:
            self._refuse_results("no config.json", "restore its config.json")
        if data is not None:
            existing = ExperimentConfig.from_run(data, source=str(self.run.config_path))
            differences = config.differences(existing)
            if differences:
                raise NeuroplasticError(
                    f"{self.run.path} holds a run with a different config; use another --out, "
                    "or the same settings to resume. Differences: " + "; ".join(differences)
                )
        self._refuse_older_format()
        current = config.identity_hash()
        unreadable: dict[Path, str] = {}
        for path in sorted(self.run.state_dir.glob("*/*.json")):
            try:
                recorded = self._read_marker(path).get(CONFIG_HASH)
            except CorruptFile as error:
                unreadable[path] = error.reason  # no hash to check: recover() decides
                continue
            if recorded is not None and recorded != current:
                raise NeuroplasticError(
                    f"{path} was computed under other settings (config hash {recorded[:12]}) "
                    f"than config.json and this run's ({current[:12]}): config.json was "
                    "replaced after that stage ran; use another --out (nothing was changed)"
                )
        self.config_hash = current
        lost = self.lost_markers(config)
        for leftover in self.run.path.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        self._reconcile(keep={self.manifest.relative(p) for p in lost})
        return ConfigCheck(warnings, unreadable, lost)

    def lost_markers(self, config: ExperimentConfig) -> list[Path]:
        """The markers of stages that are not done while a later stage of their arm is: each
        marker is written after everything before it, so only a deletion leaves such a gap."""
        lost = []
        for arm in config.arms:
            owners = [(stage_owner(arm, s), s) for s in stage_names(config.stages, config.rounds)]
            done = [self.done(*owner) for owner in owners]
            last = max((i for i, d in enumerate(done) if d), default=-1)
            lost += [self.run.marker_path(*owners[i]) for i in range(last) if not done[i]]
        return sorted(set(lost))

    def _refuse_older_format(self) -> None:
        """Refuse to add stages to a run of a format before :data:`RESUMABLE_FORMAT` that has
        done some: its stages' probes (fitted on the probe sentences) and its erasure control
        (unmatched) are not what this release computes, and the two would mix in one
        summary. A finished one (its summary.json written) adds nothing and is let through;
        its results load and report as they are."""
        found = run_format(self.run.path)
        started = any(self.run.state_dir.glob("*/*.json"))
        if found < RESUMABLE_FORMAT and started and not self.run.summary_path.is_file():
            raise NeuroplasticError(
                f"{self.run.path} was written in run-directory format {found}, whose per-layer "
                "probes and erasure control differ from this release's (format "
                f"{RUN_FORMAT}); it cannot be resumed without mixing the two. Its results "
                "still load and report; rerun into a new --out to continue"
            )

    def _refuse_results(self, problem: str, remedy: str) -> None:
        """Refuse a directory holding results when their config.json cannot be read."""
        found = self.results()
        if found:
            names = ", ".join(found[:2]) + (f" and {len(found) - 2} more" if len(found) > 2 else "")
            raise NeuroplasticError(
                f"{self.run.path} holds results of a run ({names}) but {problem}, so the "
                f"settings they were computed under cannot be checked; {remedy}, or use "
                "another --out (nothing was changed)"
            )

    def write_config(self, config: ExperimentConfig) -> None:
        """config.json with the directory's format version; a manifest first (empty for a new
        run), since a run of that format is refused without one."""
        if not self.manifest.path.is_file():
            self.manifest.update()
        atomic_write_json(self.run.config_path, config.to_run_file())

    # -- stages --------------------------------------------------------------------------------
    def done(self, arm: str, stage: str) -> bool:
        return self.run.marker_path(arm, stage).is_file()

    def marker(self, arm: str, stage: str) -> dict[str, Any]:
        return self._read_marker(self.run.marker_path(arm, stage))

    def _read_marker(self, path: Path) -> dict[str, Any]:
        remedy = "it records its stage's evaluation; restore it, or rerun into a new --out"
        return read_run_file(path, json_of(dict), remedy)

    def save(
        self,
        arm: str,
        stage: str,
        module: torch.nn.Module,
        marker: dict[str, Any],
        trainer_state: dict[str, Any] | None = None,
        previous: str | None = None,
        artifacts: Iterable[Path] = (),
    ) -> None:
        """Weights (and trainer state) after ``stage``; the manifest entries of those and of
        the stage's ``artifacts``; then its marker; then drop the weights of ``previous``,
        which resumption no longer needs."""
        if self.config_hash is None:
            raise RuntimeError("save needs the run's config: call check_config first")
        # named_parameters() lists each tensor once (a bridge's state_dict repeats aliases);
        # clone because some are views of one storage (GPT-2's q/k/v split of c_attn).
        state = {k: v.detach().cpu().clone().contiguous() for k, v in module.named_parameters()}
        data = save(state)
        written = {self.run.weights_path(arm, stage): data}
        if trainer_state is not None:
            buffer = io.BytesIO()
            torch.save(_to_cpu(trainer_state), buffer)
            written[self.run.trainer_path(arm, stage)] = buffer.getvalue()
        if self.save_checkpoints:
            written[self.run.checkpoint_path(arm, stage)] = data
        entries = {}
        for path, content in written.items():
            atomic_write_bytes(path, content)
            entries[self.manifest.relative(path)] = digest(content)
        for path in artifacts:
            entries[self.manifest.relative(path)] = file_digest(path)
        self.manifest.update(add=entries)
        # A report written before this stage no longer shows the run (an unfinished run's,
        # resumed with --no-report, would still say "Unfinished run"): `report` writes it again.
        self.run.report_path.unlink(missing_ok=True)
        atomic_write_json(
            self.run.marker_path(arm, stage), {**marker, CONFIG_HASH: self.config_hash}
        )
        if previous is not None:
            self.delete(
                [self.run.weights_path(arm, previous), self.run.trainer_path(arm, previous)]
            )

    def restore(self, arm: str, stage: str, module: torch.nn.Module) -> dict[str, Any] | None:
        """Load the weights after ``stage`` into ``module``; returns the trainer state saved
        with them (None if there was none). Both are verified against the manifest first."""
        weights, trainer = self.run.weights_path(arm, stage), self.run.trainer_path(arm, stage)
        self.manifest.verify(weights)
        load_weights(module, weights)
        if not trainer.is_file() and not self.manifest.lists(trainer):
            return None
        self.manifest.verify(trainer)
        return read_run_file(
            trainer,
            lambda p: torch.load(p, map_location="cpu", weights_only=True),
            "restore it, or rerun into a new --out",
        )

    def keep_only(self, arm: str, keep: set[str]) -> None:
        """Delete the arm's weights and trainer states except those of the ``keep`` stages
        (a kill between a marker and the clean-up of the stage before leaves one behind)."""
        directory = self.run.state_dir / arm
        listed = [self.run.path / name for name in self.manifest.entries() or {}]
        candidates = [*directory.glob("*.safetensors"), *directory.glob("*.trainer.pt")]
        candidates += [p for p in listed if p.parent == directory and p.suffix != ".json"]
        self.delete(p for p in candidates if file_owner(self.manifest.relative(p))[2] not in keep)

    def release(self, keep: set[str] = frozenset()) -> None:
        """Delete every weights and trainer-state file once the run is complete: resuming a
        finished run needs none (keep models with ``--save-checkpoints``). ``keep``: stages
        whose weights stay, in every arm (a sweep keeps ``base`` for its next cells)."""
        arms = {directory.name for directory in self.run.state_dir.glob("*/")}
        arms |= {
            name.split("/")[1]
            for name in self.manifest.entries() or {}
            if name.count("/") == 2 and name.startswith("state/")
        }
        for arm in sorted(arms):
            self.keep_only(arm, keep=set(keep))

    def missing_stages(
        self, arms: Iterable[str], n_stages: int, rounds: int = 1
    ) -> list[MissingStage]:
        """Every stage of ``arms`` whose artifacts are not all there, in order: computed and
        since deleted (its marker, the manifest or summary.json says it was done), or never
        computed (the run stopped before it)."""
        entries = self.manifest.entries() or {}
        finished = self.run.summary_path.is_file()
        missing = []
        for arm in arms:
            present = set(self.run.stages(arm))
            for stage in stage_names(n_stages, rounds):
                if stage in present:
                    continue
                paths = [self.run.stage_dir(arm, stage) / name for name in STAGE_FILES]
                names = [self.manifest.relative(p) for p in paths]
                owner = (stage_owner(arm, stage), stage)
                done = finished or self.done(*owner) or any(n in entries for n in names)
                gone = [n for n, p in zip(names, paths, strict=True) if not p.is_file()]
                missing.append(MissingStage(arm, stage, done, gone if done else []))
        return missing

    # -- metrics -------------------------------------------------------------------------------
    def rows(self, arms: tuple[str, ...], n_stages: int, rounds: int = 1) -> list[dict[str, Any]]:
        """Every evaluation of every done stage, in order; the other arms share the base."""
        rows = []
        for arm in arms:
            for stage in stage_names(n_stages, rounds):
                owner = stage_owner(arm, stage)
                if self.done(owner, stage):
                    rows += [{**row, "arm": arm} for row in self.marker(owner, stage)["rows"]]
        return rows

    def metrics_bytes(self, arms: tuple[str, ...], n_stages: int, rounds: int = 1) -> bytes:
        """metrics.jsonl as the stage markers give it."""
        rows = self.rows(arms, n_stages, rounds)
        return "".join(json.dumps(row) + "\n" for row in rows).encode()

    def write_metrics(self, arms: tuple[str, ...], n_stages: int, rounds: int = 1) -> None:
        atomic_write_bytes(self.run.metrics_path, self.metrics_bytes(arms, n_stages, rounds))

    # -- the manifest --------------------------------------------------------------------------
    def record(self, paths: Iterable[Path]) -> None:
        """Add files written outside :meth:`save` (recomputed stage files) to the manifest."""
        self.manifest.update(add={self.manifest.relative(p): file_digest(p) for p in paths})

    def delete(self, paths: Iterable[Path]) -> None:
        """Delete files and forget them in the manifest."""
        # Forgotten first: a kill in between leaves a file the manifest does not list (swept
        # or rewritten later), never a listed one that is gone, which reads as a deletion.
        paths = set(paths)
        if paths:
            self.manifest.update(remove=[self.manifest.relative(p) for p in paths])
        for path in paths:
            path.unlink(missing_ok=True)

    def _reconcile(self, keep: set[str] = frozenset()) -> None:
        """Forget the manifest entries of stages without a marker (cut short by a kill: they
        are computed again), but those of the ``keep`` markers' stages (deleted markers, which
        recovery decides about). A run from before manifests gets one of its files as they
        are."""
        entries = self.manifest.entries()
        adopted: dict[str, Any] = {}
        if entries is None:
            if not any(self.run.state_dir.glob("*/*.json")):
                return  # nothing done yet: the first stage writes the manifest
            files = [
                path
                for name in ("state", "stages", "checkpoints")
                for path in (self.run.path / name).rglob("*")
                # (the stage markers are state's .json files: not results)
                if path.is_file() and not (name == "state" and path.suffix == ".json")
            ]
            adopted = {self.manifest.relative(p): file_digest(p) for p in files}
            entries = adopted
        kept = {file_owner(name)[1:] for name in keep}
        stale = [
            name for name in entries if not self._owner_done(name) and _stage_of(name) not in kept
        ]
        if adopted or stale:
            self.manifest.update(add=adopted, remove=stale)

    def _owner_done(self, name: str) -> bool:
        """Whether the stage that wrote the file ``name`` (relative) is done."""
        owner = file_owner(name)
        if owner is None:
            return True
        kind, arm, stage = owner
        return self.done(stage_owner(arm, stage) if kind == "stage" else arm, stage)

    def results(self) -> list[str]:
        """Relative paths of the results in the directory (see ``RESULTS``)."""
        found = []
        for name in RESULTS:
            path = self.run.path / name
            files = [path] if path.is_file() else sorted(path.rglob("*"))
            found += [p for p in files if p.is_file() and not p.name.endswith(".tmp")]
        return [self.manifest.relative(p) for p in found]


def check_stages_match_config(run: RunDir) -> None:
    """Refuse to read a run whose config.json is not the settings its stages were computed
    under (a marker's config hash differs: config.json was edited or replaced since), as a
    resumption does: its results would be shown beside the wrong settings. Markers that
    cannot be read, or carry no hash (a run from before hashes), are left to their readers."""
    config = ExperimentConfig.from_run(run.config(), source=str(run.config_path))
    current = config.identity_hash()
    for path in sorted(run.state_dir.glob("*/*.json")):
        try:
            recorded = json_of(dict)(path).get(CONFIG_HASH)
        except (OSError, ValueError):
            continue
        if isinstance(recorded, str) and recorded != current:
            raise NeuroplasticError(
                f"{path} was computed under other settings (config hash {recorded[:12]}) than "
                f"{run.config_path} holds ({current[:12]}): config.json was changed after that "
                "stage ran, and its results would be shown beside the wrong settings; restore "
                "the run's config.json (its summary.json keeps the settings of a finished run)"
            )


def _stage_of(name: str) -> tuple[str, str] | None:
    """(arm, stage) whose record holds the file ``name`` (relative): a base's stage files are
    the concept arm's record (but the naive arm's own)."""
    owner = file_owner(name)
    if owner is None:
        return None
    kind, arm, stage = owner
    return (stage_owner(arm, stage) if kind == "stage" else arm), stage


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Copy a safetensors file of ``module.named_parameters()`` into ``module``."""
    if path.is_dir():
        raise NeuroplasticError(
            f"checkpoint {path} is a directory; give one of its .safetensors files "
            "(checkpoints/{arm}/{stage}.safetensors of a run made with --save-checkpoints)"
        )
    if not path.is_file():
        raise NeuroplasticError(f"checkpoint not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for any malformed file
        raise NeuroplasticError(
            f"{path} is not a readable safetensors checkpoint ({error}); give the "
            "checkpoints/{arm}/{stage}.safetensors of a run made with --save-checkpoints"
        ) from error
    parameters = dict(module.named_parameters())
    missing = sorted(set(parameters) - set(state))
    unexpected = sorted(set(state) - set(parameters))
    wrong = [k for k in set(state) & set(parameters) if state[k].shape != parameters[k].shape]
    if missing or unexpected or wrong:
        raise NeuroplasticError(
            f"{path} does not fit this model and head: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(wrong)} mis-shaped tensors "
            f"(e.g. {(missing or unexpected or wrong)[:2]})"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name])


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value
