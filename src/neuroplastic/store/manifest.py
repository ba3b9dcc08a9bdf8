"""The run's manifest: the size and sha256 of every file a resumption or a report trusts.

```
DIR/manifest.json    {"stages/concept/base/ranking.parquet": {"size": 1234, "sha256": "..."}, ...}
```

:class:`neuroplastic.store.checkpoint.Checkpointer` adds a stage's files (its artifacts under
``stages/``, its weights and trainer state under ``state/``, its checkpoint) right before the
stage's marker, and removes the files it deletes. The readers verify what they read: a file
changed after the run wrote it, deleted while listed, or never written by the run is refused,
never read. Whether a run must have a manifest is its format version (:func:`run_format`): a run
of format 0, written before manifests existed, has nothing to verify against and is read as it
is; a run of format 1 without its manifest is refused.

A file that cannot be read at all (truncated, or garbage) is a :class:`CorruptFile`: one line
naming it, why it cannot be read and what to do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from neuroplastic.config import FORMAT_KEY, check_format
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_json

MANIFEST = "manifest.json"
#: the run's settings and its format version (:mod:`neuroplastic.store.rundir` reads it)
CONFIG_FILE = "config.json"
#: The stage-marker field holding the hash of the config a stage was computed under. Every
#: marker that carries one was written after the manifest covering its stage.
CONFIG_HASH = "config_hash"

Entry = dict[str, Any]


class CorruptFile(NeuroplasticError):
    """A run file that exists but cannot be read as what it should be (truncated, garbage)."""

    def __init__(self, path: Path, reason: str, remedy: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is corrupt or truncated ({reason}); {remedy}")


def describe(error: BaseException, path: Path | None = None) -> str:
    """Why a reader failed, as one short line (parsers' messages can span lines; the file's
    path, which the message names already, is left out)."""
    text = str(error)
    if path is not None:
        text = text.replace(f" '{path}'", "").replace(str(path), Path(path).name)
    text = " ".join(text.split())
    text = text if len(text) <= 160 else text[:157] + "..."
    if isinstance(error, NeuroplasticError):  # already says what is wrong
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def digest(data: bytes) -> Entry:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_digest(path: Path) -> Entry:
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
            size += len(block)
    return {"size": size, "sha256": hasher.hexdigest()}


class Manifest:
    """``DIR/manifest.json``: relative path -> ``{"size", "sha256"}``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / MANIFEST

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    # -- reading -------------------------------------------------------------------------------
    def entries(self) -> dict[str, Entry] | None:
        """The recorded files, or None for a run from before manifests (nothing to verify).
        A run whose stage markers say it kept a manifest, but has none, is refused."""
        if self.path.is_file():
            try:
                entries = json.loads(self.path.read_bytes().decode("utf-8"))
            except ValueError:  # not JSON, or not UTF-8 text: both mean not the run's manifest
                entries = None
            if not isinstance(entries, dict):
                raise NeuroplasticError(
                    f"{self.path} is not a manifest (a JSON object of files): it was changed "
                    "after the run wrote it; restore it or rerun into a new --out"
                )
            return entries
        if run_format(self.root) >= 1:
            raise NeuroplasticError(
                f"{self.path} is missing, though the run kept one: its files cannot be "
                "verified; restore it or rerun into a new --out"
            )
        return None

    def matches(self, path: Path, entries: Mapping[str, Entry] | None = None) -> bool:
        """Whether ``path`` is listed in ``entries`` (default: the manifest's) and is exactly
        the file recorded there."""
        recorded = (entries if entries is not None else self.entries() or {}).get(
            self.relative(path)
        )
        return recorded is not None and Path(path).is_file() and file_digest(path) == recorded

    def lists(self, path: Path) -> bool:
        entries = self.entries()
        return entries is not None and self.relative(path) in entries

    def verify(self, path: Path, entries: Mapping[str, Entry] | None = None) -> None:
        """Refuse ``path`` unless it is exactly the file the run recorded."""
        if entries is None:
            entries = self.entries()
            if entries is None:
                return  # a run from before manifests
        path = Path(path)
        name = self.relative(path)
        recorded = entries.get(name)
        if recorded is None:
            raise NeuroplasticError(
                f"{path} is not in the run's manifest: the run did not write it (or "
                f"{MANIFEST} was replaced); remove it, or rerun into a new --out"
            )
        if not path.is_file():
            raise NeuroplasticError(
                f"{path} is missing, though the run's manifest lists it: it was deleted after "
                "the run wrote it; restore it or rerun into a new --out"
            )
        actual = file_digest(path)
        if actual["size"] != recorded["size"]:
            found = f"{actual['size']} bytes, recorded {recorded['size']}"
        elif actual["sha256"] != recorded["sha256"]:
            found = f"sha256 {actual['sha256'][:16]}…, recorded {recorded['sha256'][:16]}…"
        else:
            return
        raise NeuroplasticError(
            f"{path} does not match the run's manifest ({found}): it was changed after the run "
            "wrote it; restore it or rerun into a new --out"
        )

    # -- writing -------------------------------------------------------------------------------
    def update(self, add: Mapping[str, Entry] | None = None, remove: Iterable[str] = ()) -> None:
        """Record ``add`` (relative path -> entry) and forget ``remove``, in one atomic write."""
        entries = dict(self.entries() or {})
        for name in remove:
            entries.pop(name, None)
        entries.update(add or {})
        atomic_write_json(self.path, dict(sorted(entries.items())))


def run_format(root: str | Path) -> int:
    """The format version of the run directory ``root`` (:data:`neuroplastic.config.RUN_FORMAT`):
    its config.json's ``format``; for a run written before that key existed, 1 if it kept a
    manifest or a stage marker with a config hash (the release that added one added both),
    else 0. A version newer than this release reads is refused."""
    root = Path(root)
    try:
        config = json.loads((root / CONFIG_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: its own reader reports that
        config = None
    if isinstance(config, dict) and FORMAT_KEY in config:
        return check_format(config[FORMAT_KEY], str(root / CONFIG_FILE))
    if (root / MANIFEST).is_file():
        return 1
    for marker in (root / "state").glob("*/*.json"):
        try:
            if CONFIG_HASH in json.loads(marker.read_bytes().decode("utf-8")):
                return 1
        except (ValueError, OSError):  # a corrupt marker is reported by its reader
            continue
    return 0
