"""``neuroplastic`` command line: rank, run, sweep, report, view.

Every user-facing failure is a ``NeuroplasticError``, printed as one line with exit status 2.
The parsers are built in :mod:`neuroplastic.cli.parser` from declared flags
(:mod:`neuroplastic.cli.options`, read with :mod:`neuroplastic.cli.arguments`); the commands'
bodies are in :mod:`~neuroplastic.cli.run_commands` (run, report),
:mod:`~neuroplastic.cli.sweep_command` and :mod:`~neuroplastic.cli.inspect_commands` (rank,
view). This module runs one of them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from neuroplastic.cli.arguments import grid_axis as _grid_axis
from neuroplastic.cli.inspect_commands import RANK_JSON_KEYS
from neuroplastic.cli.options import MAX_RUNS
from neuroplastic.cli.parser import SETTING_HELP, build_parser
from neuroplastic.cli.run_commands import config_from_args as _config

# The names tests and demos/05_paper_setting.py import from here.
_parser = build_parser
__all__ = ["MAX_RUNS", "RANK_JSON_KEYS", "SETTING_HELP", "_config", "_grid_axis", "_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = _facts_sweep(_attach_dash_values(sys.argv[1:] if argv is None else list(argv)))
    argv = _facts_preset(argv)
    args = parser.parse_args(argv)  # --help answers and exits here, before anything heavy
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from neuroplastic.errors import NeuroplasticError
    from neuroplastic.progress import quiet

    try:
        with quiet(getattr(args, "quiet", False)), _terminate_as_interrupt():
            return int(args.handler(args) or 0)
    except _Terminated:
        print(
            f"neuroplastic {args.command}: terminated; rerun the same command to resume",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM
    except NeuroplasticError as error:
        print(f"neuroplastic {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file system refusal no check foresaw (full disk, permissions)
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"neuroplastic {args.command}: error: {error.strerror or error}{where}; completed "
            "results are kept: fix it and rerun the same command",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"neuroplastic {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


def _facts_sweep(argv: list[str]) -> list[str]:
    """``sweep --dataset facts ...`` as ``facts ...``: the facts study has settings of its own
    (protocols, weight edits, held-out share), and a sweep of it is its own ``--grid`` over
    seeds, so the sweep hands every other argument to that command (``--help`` shows its flags).
    """
    if not argv or argv[0] != "sweep":
        return argv
    rest = argv[1:]
    for index, token in enumerate(rest):
        if token == "--dataset=facts":
            return ["facts", *rest[:index], *rest[index + 1 :]]
        if token == "--dataset" and rest[index + 1 : index + 2] == ["facts"]:
            return ["facts", *rest[:index], *rest[index + 2 :]]
    return argv


def _facts_preset(argv: list[str]) -> list[str]:
    """``facts --preset NAME ...``: the preset's flags placed before the ones given, so that a
    flag given with the preset wins (argparse keeps a repeated flag's last value). An unknown
    name is left for the parser's own choices to refuse."""
    from neuroplastic.presets import FACTS_PRESETS, facts_preset_flags

    if not argv or argv[0] != "facts":
        return argv
    for index, token in enumerate(argv[1:], start=1):
        name = token.removeprefix("--preset=") if token.startswith("--preset=") else None
        if token == "--preset" and index + 1 < len(argv):
            name = argv[index + 1]
        if name in FACTS_PRESETS:
            return ["facts", *facts_preset_flags(name), *argv[1:]]
    return argv


def _attach_dash_values(argv: list[str]) -> list[str]:
    """``--flag -1:3`` as ``--flag=-1:3``: argparse reads a value that starts with a dash as a
    flag unless it is a plain negative number, so ``--neurons -1:3`` or ``--grid -...`` got
    "expected one argument" where ``--flag=VALUE`` reached the setting's own check. No flag
    starts with a dash and a digit, so such a token is always the value of the flag before."""
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if (
            previous.startswith("--")
            and len(previous) > 2  # not the end of the flags
            and "=" not in previous
            and len(token) > 1
            and token[0] == "-"
            and (token[1].isdigit() or token[1] == ".")
        ):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


class _Terminated(BaseException):
    """SIGTERM (a scheduler's pre-emption, `kill`) raised where the command is, so that it
    unwinds as an interrupt does: locks released, the stages written so far kept."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread (a handler can only be set there): leave it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
