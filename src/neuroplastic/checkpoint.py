"""Resume state of a run: which stages are done, and the weights and trainer state after them.

A stage is done when its marker exists. The marker is written last, after the stage's artifacts,
its weights and its trainer state, each written atomically, so a run killed at any moment
resumes from the last complete stage and ends with the same summary. Only the base weights and
the latest stage's of an arm are kept on disk (all resumption needs), and none once the run is
complete.

```
DIR/state/{arm}/{stage}.json          {"rows": [metric rows], ...}: the stage is done
DIR/state/{arm}/{stage}.safetensors   model and head weights after the stage
DIR/state/{arm}/{stage}.trainer.pt    optimizer and schedule state after the stage
```
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from neuroplastic.config import ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from neuroplastic.rundir import RunDir, stage_names


class Checkpointer:
    def __init__(self, run: RunDir, save_checkpoints: bool = False) -> None:
        self.run = run
        self.save_checkpoints = save_checkpoints

    # -- the config a run is bound to --------------------------------------------------------
    def check_config(self, config: ExperimentConfig) -> None:
        """Refuse to resume a run made with other settings; sweep a crash's temporary files."""
        if self.run.path.is_dir():
            for leftover in self.run.path.rglob(".*.tmp"):
                leftover.unlink(missing_ok=True)
        if self.run.config_path.is_file():
            existing = ExperimentConfig.from_dict(
                self.run.config(), source=str(self.run.config_path)
            )
            differences = config.differences(existing)
            if differences:
                raise NeuroplasticError(
                    f"{self.run.path} holds a run with a different config; use another --out, "
                    "or the same settings to resume. Differences: " + "; ".join(differences)
                )

    def write_config(self, config: ExperimentConfig) -> None:
        atomic_write_json(self.run.config_path, config.to_dict())

    # -- stages --------------------------------------------------------------------------------
    def done(self, arm: str, stage: str) -> bool:
        return self._marker(arm, stage).is_file()

    def marker(self, arm: str, stage: str) -> dict[str, Any]:
        return json.loads(self._marker(arm, stage).read_text())

    def save(
        self,
        arm: str,
        stage: str,
        module: torch.nn.Module,
        marker: dict[str, Any],
        trainer_state: dict[str, Any] | None = None,
        previous: str | None = None,
    ) -> None:
        """Weights (and trainer state) after ``stage``, then its marker; then drop the weights
        of ``previous``, which resumption no longer needs."""
        # named_parameters() lists each tensor once (a bridge's state_dict repeats aliases);
        # clone because some are views of one storage (GPT-2's q/k/v split of c_attn).
        state = {k: v.detach().cpu().clone().contiguous() for k, v in module.named_parameters()}
        data = save(state)
        atomic_write_bytes(self._weights(arm, stage), data)
        if trainer_state is not None:
            buffer = io.BytesIO()
            torch.save(_to_cpu(trainer_state), buffer)
            atomic_write_bytes(self._trainer(arm, stage), buffer.getvalue())
        if self.save_checkpoints:
            atomic_write_bytes(self.run.checkpoint_path(arm, stage), data)
        atomic_write_json(self._marker(arm, stage), marker)
        if previous is not None:
            self._weights(arm, previous).unlink(missing_ok=True)
            self._trainer(arm, previous).unlink(missing_ok=True)

    def restore(self, arm: str, stage: str, module: torch.nn.Module) -> dict[str, Any] | None:
        """Load the weights after ``stage`` into ``module``; returns the trainer state saved
        with them (None if there was none)."""
        load_weights(module, self._weights(arm, stage))
        path = self._trainer(arm, stage)
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def keep_only(self, arm: str, keep: set[str]) -> None:
        """Delete the arm's weights and trainer states except those of the ``keep`` stages
        (a kill between a marker and the clean-up of the stage before leaves one behind)."""
        for path in (self.run.state_dir / arm).glob("*.safetensors"):
            if path.stem not in keep:
                path.unlink(missing_ok=True)
        for path in (self.run.state_dir / arm).glob("*.trainer.pt"):
            if path.name.removesuffix(".trainer.pt") not in keep:
                path.unlink(missing_ok=True)

    def release(self) -> None:
        """Delete every weights and trainer-state file once the run is complete: resuming a
        finished run needs none (keep models with ``--save-checkpoints``)."""
        for pattern in ("*.safetensors", "*.trainer.pt"):
            for path in self.run.state_dir.glob(f"*/{pattern}"):
                path.unlink(missing_ok=True)

    # -- metrics -------------------------------------------------------------------------------
    def rows(self, arms: tuple[str, ...], n_stages: int) -> list[dict[str, Any]]:
        """Every evaluation of every done stage, in order; the random arm shares the base."""
        rows = []
        for arm in arms:
            for stage in stage_names(n_stages):
                owner = "concept" if stage == "base" else arm
                if self.done(owner, stage):
                    rows += [{**row, "arm": arm} for row in self.marker(owner, stage)["rows"]]
        return rows

    def write_metrics(self, arms: tuple[str, ...], n_stages: int) -> None:
        lines = "".join(json.dumps(row) + "\n" for row in self.rows(arms, n_stages))
        atomic_write_text(self.run.metrics_path, lines)

    # -- paths ---------------------------------------------------------------------------------
    def _marker(self, arm: str, stage: str) -> Path:
        return self.run.state_dir / arm / f"{stage}.json"

    def _weights(self, arm: str, stage: str) -> Path:
        return self.run.state_dir / arm / f"{stage}.safetensors"

    def _trainer(self, arm: str, stage: str) -> Path:
        return self.run.state_dir / arm / f"{stage}.trainer.pt"


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Copy a safetensors file of ``module.named_parameters()`` into ``module``."""
    if not path.is_file():
        raise NeuroplasticError(f"checkpoint not found: {path}")
    state = load_file(str(path))
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
