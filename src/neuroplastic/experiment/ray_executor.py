"""A sweep's runs as Ray tasks: every (cell, seed) run in parallel wherever Ray has workers.

Each task is one ``run_experiment`` into its own run directory, exactly as the serial sweep
runs it, so the directories must be on a file system every worker and the driver see (one
machine, or a cluster's shared disk). A worker that dies mid-run (killed, out of memory, a
lost node) has its task retried by Ray; the retry resumes the run from its directory (the
directory's lock dies with its holder). A run that fails with an error is not retried: the
error is the run's, and the sweep stops with it.

Base fine-tuning is shared as in the serial sweep (:mod:`neuroplastic.store.shared_base`), in two
waves: first one run per group of cells that fine-tune the same base (it keeps its base),
then every other run, loading it.

Ray is an optional extra (``pip install "neuroplastic[cluster]"``).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuroplastic.config import ExperimentConfig
from neuroplastic.errors import NeuroplasticError
from neuroplastic.extras import require

#: how often Ray runs a task again after its worker died (not after an error in the run)
MAX_RETRIES = 3


def _run_one(
    config: dict[str, Any],
    path: str,
    base_from: list[str],
    keep_base: bool,
    cpus: float,
    quiet: bool = False,
) -> str:
    """One run in a Ray worker (module-level, so Ray pickles it by reference); ``quiet``: no
    per-stage lines (``--quiet``), its warnings and errors still on stderr."""
    import torch

    from neuroplastic.experiment.pipeline import run_experiment

    torch.set_num_threads(max(1, int(cpus)))  # the task's CPUs, not the machine's
    run_experiment(
        ExperimentConfig.from_dict(config), path, progress=False,
        log=_silent if quiet else _worker_log(path), base_from=base_from, keep_base=keep_base,
    )  # fmt: skip
    return path


def _silent(*_: object) -> None:
    pass


@contextmanager
def _stderr_held() -> Iterator[Callable[[], str]]:
    """Hold what is written to file descriptor 2 (Ray's core logs there itself, around Python's
    logging: a cluster it cannot reach gives a line every few seconds) until the block ends;
    yields a function returning what was held so far."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield lambda: (held.seek(0), held.read().decode(errors="replace"))[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _worker_log(path: str) -> Callable[[str], None]:
    name = "/".join(Path(path).parts[-2:])

    def log(line: str) -> None:
        print(f"[{name}] {line}", flush=True)  # Ray forwards workers' output to the driver

    return log


class RayExecutor:
    """Runs batches of sweep runs as Ray tasks: ``address`` None starts (or joins) a local
    Ray instance, ``"auto"`` or ``HOST:PORT`` joins a cluster; every run asks Ray for
    ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs."""

    def __init__(
        self,
        address: str | None = None,
        cpus_per_run: float = 1.0,
        gpus_per_run: float = 0.0,
        log: Callable[[str], Any] = print,
        quiet: bool = False,
    ) -> None:
        ray = require("ray", "--executor ray")
        if cpus_per_run <= 0 or gpus_per_run < 0:
            raise NeuroplasticError(
                f"--cpus-per-run must be > 0 and --gpus-per-run >= 0; got {cpus_per_run} and "
                f"{gpus_per_run}"
            )
        self.ray, self.log, self.quiet = ray, (_silent if quiet else log), quiet
        self.cpus, self.gpus = cpus_per_run, gpus_per_run
        if not ray.is_initialized():
            failed = None
            with _stderr_held() as held:
                try:
                    ray.init(
                        address=address,
                        log_to_driver=not quiet,  # workers' lines (and quiet ones print none)
                        logging_level=logging.WARNING if quiet else logging.INFO,
                    )
                except (ConnectionError, RuntimeError) as error:
                    failed = error
            if failed is not None:  # one line, not Ray's retries
                raise NeuroplasticError(
                    f"cannot reach a Ray cluster at {address!r} ({_first_line(failed)}); start "
                    "one with `ray start --head`, or leave out --ray-address for a local "
                    "instance"
                ) from None
            if not quiet:  # what Ray said while starting
                sys.stderr.write(held())
        self._task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_run_one)

    def run(self, batch: Sequence[tuple[str, ExperimentConfig, Path, list[Path], bool]]) -> None:
        """Run ``(label, config, path, base_from, keep_base)`` runs in parallel; return when all
        are done, or raise the first run's error (naming the run)."""
        if not batch:
            return
        options = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        pending = {
            self._task.options(**options).remote(
                config.to_dict(),
                str(path),
                [str(p) for p in base_from],
                keep,
                self.cpus,
                self.quiet,
            ): label
            for label, config, path, base_from, keep in batch
        }
        done = 0
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            label = pending.pop(ready[0])
            try:
                self.ray.get(ready[0])
            except self.ray.exceptions.RayError as error:
                for ref in pending:
                    self.ray.cancel(ref)
                cause = getattr(error, "cause", None) or error
                raise NeuroplasticError(f"sweep run {label} failed on Ray: {cause}") from None
            done += 1
            self.log(f"[sweep] {label}: done on Ray ({done} of {len(batch)} in this wave)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
