"""Atomic file writes: a crash never leaves a half-written artifact behind, and a write that
fails (a full disk, a read-only file system) leaves the previous version intact and ends in a
one-line :class:`NeuroplasticError` naming the file."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from neuroplastic.errors import NeuroplasticError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        # mkstemp makes the file 0600; a result gets the permissions any new file would.
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _discard(temporary)
        hint = (
            "free some space and rerun the same command: completed results are kept"
            if error.errno == errno.ENOSPC
            else "check the path and its permissions, then rerun: completed results are kept"
        )
        raise NeuroplasticError(
            f"cannot write {path}: {error.strerror or error}; {hint}"
        ) from error
    except BaseException:
        _discard(temporary)
        raise
    return path


def _umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _discard(temporary: str | None) -> None:
    if temporary is not None:
        Path(temporary).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")
