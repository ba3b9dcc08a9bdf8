"""Progress output that suits where it goes: bars on a terminal, one line per stage in a log.

A tqdm bar redraws itself with carriage returns; in a log file (stderr not a terminal) that is
thousands of partial lines. So :func:`progress` draws a bar only when stderr is a terminal (or in
a Jupyter kernel, whose widget bars do not write carriage returns to a file), and
:func:`report_line` writes the one line a stage ends with. :func:`quiet` silences both for a
block (the CLI's ``--quiet``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_quiet = False


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Within the block, no bars and no stage lines when ``enabled`` (restored on exit)."""
    global _quiet
    before, _quiet = _quiet, _quiet or enabled
    try:
        yield
    finally:
        _quiet = before


def is_quiet() -> bool:
    return _quiet


def _in_kernel() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _interactive() -> bool:
    """A terminal on stderr, or a Jupyter kernel (its stderr is never a TTY)."""
    stream = sys.stderr
    if stream is not None and getattr(stream, "isatty", lambda: False)():
        return True
    return _in_kernel()


def _bar_class() -> Any:
    """tqdm's widget bar in a kernel that has ipywidgets; its text bar everywhere else (in a
    kernel without ipywidgets, tqdm.auto would print a red "IProgress not found" warning)."""
    import importlib.util

    if _in_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True
) -> Any:
    """``iterable`` wrapped in a tqdm bar when it is worth drawing, else a silent pass-through.

    The bar is drawn when ``enabled``, not inside :func:`quiet`, and stderr is a terminal.
    Either way the result iterates like ``iterable`` and accepts tqdm's ``set_postfix`` and
    ``close`` (a disabled tqdm yields the items untouched and writes nothing)."""
    tqdm = _bar_class()  # imported here, so importing this module stays free
    shown = enabled and not _quiet and _interactive()
    return tqdm(iterable, desc=desc, total=total, disable=not shown, leave=False)


def report_line(message: str, enabled: bool = True) -> None:
    """One line on stderr (a stage finished, with its figures), unless silenced."""
    if enabled and not _quiet:
        print(message, file=sys.stderr, flush=True)
