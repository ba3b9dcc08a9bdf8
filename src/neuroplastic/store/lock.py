"""The run directory's lock: one writer at a time, readers only while no one writes.

``DIR/.lock`` is ``flock``'ed exclusively by the process writing the run (rank 0 of a launched
run) and shared by a report reading it. The kernel drops a lock when its process dies, however
it dies, so a stale lock file blocks nothing; the writer's PID in the file names it in the
refusal a second writer gets.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from neuroplastic.errors import NeuroplasticError


@dataclass
class RunLock:
    """The exclusive lock on a run directory, held until :meth:`release`."""

    fd: int

    @classmethod
    def take(cls, directory: Path, lock_path: Path) -> RunLock:
        """Lock ``directory`` (made if missing) through ``lock_path``, or refuse at once,
        naming the holder."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # e.g. a directory under /proc: it lists, but holds no files
            raise NeuroplasticError(
                f"cannot create files in the run directory {directory} ({error.strerror}: "
                f"{lock_path}); give a directory you can write to as --out"
            ) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            who = "another process (a neuroplastic run or report)"
            if holder:
                who = f"process {holder} (another neuroplastic run)"
            raise NeuroplasticError(
                f"{directory} is in use by {who}; wait for it or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # drops the flock


@contextmanager
def reading(run) -> Iterator[None]:
    """Hold a shared lock on ``run`` (a :class:`~neuroplastic.store.rundir.RunDir`) while
    reading it (a report): refused while a run holds the exclusive one. A directory no run of
    this version has locked has no lock file, and none is made."""
    try:
        fd = os.open(run.lock_path, os.O_RDONLY)
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder(fd)
            who = f"process {holder}" if holder else "another process"
            raise NeuroplasticError(
                f"{run.path} is in use by {who} (a neuroplastic run writing it); wait for it to "
                "finish, then report"
            ) from None
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> int | None:
    """The PID in a lock file, if that process is alive."""
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
        os.kill(pid, 0)
    except PermissionError:
        return pid
    except (ValueError, OSError):
        return None
    return pid
