"""The command line's value parsers: what a flag's text becomes, refused with one line when it
cannot be (argparse prints it as ``argument --flag: ...``). Light: no torch."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any


def setting_metadata() -> dict[str, Any]:
    """Each ExperimentConfig setting's ``help``, ``unit`` and ``zero_allowed``, as the config
    declares them (:func:`neuroplastic.config.setting`): the one description of a setting."""
    from neuroplastic.config import ExperimentConfig  # light: no torch

    return {f.name: f.metadata for f in fields(ExperimentConfig)}


def setting_defaults() -> dict[str, Any]:
    """ExperimentConfig's defaults read off its fields: building one validates the method
    against neuroplastic.core.ranking, which imports torch."""
    from neuroplastic.config import ExperimentConfig

    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()
        for f in fields(ExperimentConfig)
    }


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def comma_values(text: str, example: str, given: str | None = None) -> list[str]:
    """The comma-separated values of ``text`` (part of the argument ``given``), stripped; an
    empty one (``a,,b``, a trailing comma) is refused, never dropped: a value left out changes
    what runs."""
    parts = [part.strip() for part in text.split(",")]
    if any(not part for part in parts):
        where = next(i for i, part in enumerate(parts) if not part) + 1
        raise argparse.ArgumentTypeError(
            f"{given or text!r}: value {where} of {len(parts)} is empty; give every value between "
            f"commas, e.g. {example}"
        )
    return parts


def int_list(text: str) -> list[int]:
    parts = comma_values(text, "0,1,2")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None


def grid_parts(text: str, example: str) -> tuple[str, list[str]]:
    """``SETTING=V1,V2`` split: the setting (dashes or underscores, a leading ``--`` dropped)
    and its values as text, none empty; ``example`` is a whole axis shown when ``=`` is
    missing. Which settings exist and what their values become is the caller's to say."""
    name, equals, values = text.partition("=")
    key = name.strip().removeprefix("--").replace("-", "_")
    if not equals:
        raise argparse.ArgumentTypeError(f"{text!r}: give SETTING=V1,V2 (e.g. {example})")
    if not values.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: no values after '='")
    return key, comma_values(values, f"{key}=V1,V2", given=text)


def grid_axis(text: str) -> tuple[str, list[Any]]:
    """``SETTING=V1,V2``: the setting (dashes or underscores) and its values, typed as the
    setting is (``none`` for a setting that may be unset)."""
    key, parts = grid_parts(text, "relearn_lr=1e-5,1e-4")
    defaults = setting_defaults()
    if key not in defaults:
        known = ", ".join(sorted(defaults))
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SETTING=V1,V2 with SETTING one of {known}"
        )
    default = defaults[key]

    def typed(part: str) -> Any:
        if default is None:
            return None if part.lower() == "none" else part
        if isinstance(default, bool):
            if part.lower() not in ("true", "false"):
                raise argparse.ArgumentTypeError(f"{text!r}: {key} takes true or false")
            return part.lower() == "true"
        try:
            return type(default)(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {part!r} is not a {type(default).__name__} ({key})"
            ) from None

    return key, [typed(part) for part in parts]


def choice_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """A parser of comma-separated values, each one of ``allowed`` and given once."""

    def parse(text: str) -> list[str]:
        values = comma_values(text, ",".join(allowed[:2]))
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(allowed)} (comma-separated)"
            )
        twice = next((v for v in values if values.count(v) > 1), None)
        if twice is not None:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {twice} is given twice; give each value once (one cell each)"
            )
        return values

    return parse


def value_list(
    kind: Callable[[str], Any], allowed: Sequence[str], item: str, example: str
) -> Callable[[str], list[Any]]:
    """A parser of comma-separated values, each read with ``kind`` or, where ``allowed`` is
    given, one of those; a refusal calls one value ``item`` and shows ``example``."""

    def parse(text: str) -> list[Any]:
        values = comma_values(text, example)
        if allowed:
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown {item} {unknown[0]!r}; choose from {', '.join(allowed)}"
                )
            return values
        try:
            return [kind(v) for v in values]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of {item}s") from None

    return parse
