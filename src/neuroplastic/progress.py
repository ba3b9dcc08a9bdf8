"""Progress output that suits where it goes: bars on a terminal, one line per stage in a log.

A tqdm bar redraws itself with carriage returns; in a log file (stderr not a terminal) that is
thousands of partial lines. So :func:`progress` draws a bar only when stderr is a terminal (or in
a Jupyter kernel, whose widget bars do not write carriage returns to a file), and
:func:`report_line` writes the one line a stage ends with. :func:`quiet` silences both for a
block (the CLI's ``--quiet``). :func:`library_bars` holds the bars that Hugging Face's libraries
draw themselves (loading weights, generating a dataset's splits) to the same rule.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable, Iterator
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


def _bar_switches() -> Iterator[tuple[Callable[[], bool], Callable[[], None], Callable[[], None]]]:
    """(is enabled, disable, enable) of each installed library's global bar switch, in the
    order they are to be restored: transformers' switch sets huggingface_hub's too, so the
    hub's own comes after it."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as transformers_logging

        yield (
            transformers_logging.is_progress_bar_enabled,
            transformers_logging.disable_progress_bar,
            transformers_logging.enable_progress_bar,
        )
    if importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import utils as hub

        yield (
            lambda: not hub.are_progress_bars_disabled(),
            hub.disable_progress_bars,
            hub.enable_progress_bars,
        )
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        yield (
            datasets.is_progress_bar_enabled,
            datasets.disable_progress_bars,
            datasets.enable_progress_bars,
        )


@contextmanager
def library_bars(enabled: bool = True) -> Iterator[None]:
    """Within the block, Hugging Face's own bars (huggingface_hub, transformers, datasets) are
    drawn only where :func:`progress` would draw ours: ``enabled``, not quiet, on a terminal or
    in a kernel. Every switch is set back as it was found at the end: one the user turned off
    (``HF_HUB_DISABLE_PROGRESS_BARS``, say) stays off."""
    if enabled and not _quiet and _interactive():
        yield
        return
    switches = list(_bar_switches())
    found = [is_enabled() for is_enabled, _, _ in switches]
    for _, disable, _ in switches:
        disable()
    try:
        yield
    finally:
        for (_, disable, enable), was_enabled in zip(switches, found, strict=True):
            (enable if was_enabled else disable)()


def report_line(message: str, enabled: bool = True) -> None:
    """One line on stderr (a stage finished, with its figures), unless silenced."""
    if enabled and not _quiet:
        print(message, file=sys.stderr, flush=True)
