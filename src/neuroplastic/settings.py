"""How a setting is declared: :func:`setting`, a dataclass field that carries its help, unit and
:class:`Bound`, from which the checks and the command line's flags are made
(:class:`neuroplastic.config.ExperimentConfig`, and each command's own flags in
:mod:`neuroplastic.cli.options`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from neuroplastic.errors import NeuroplasticError


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting may take: from ``low`` to ``high`` (None: no end), each end
    open or closed. NaN is never inside; ``finite`` refuses the infinities as well. ``note``
    says what a value means where it needs saying (``0: the whole split``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = False
    note: str = ""

    def admits(self, value: float) -> bool:
        if math.isnan(value) or (self.finite and not math.isfinite(value)):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """What the bound says, as an error message words it: ``positive``, ``>= 0``,
        ``in (0, 1]``."""
        if self.high is None:
            if self.low == 0:
                return "positive" if self.low_open else ">= 0"
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        low = "-inf" if self.low is None else _number(self.low)
        opening, closing = "(["[not self.low_open], ")]"[not self.high_open]
        return f"in {opening}{low}, {_number(self.high)}{closing}"

    def check(self, name: str, value: float, default: float) -> None:
        """Refuse ``value`` of setting ``name`` if the bound does not admit it, saying why."""
        if self.admits(value):
            return
        flag = "--" + name.replace("_", "-")
        if self.finite and not math.isfinite(value):
            raise NeuroplasticError(
                f"{name} must be a finite number; got {value}. Give {flag} a number such as "
                f"{default}"
            )
        if math.isnan(value):
            raise NeuroplasticError(
                f"{name} must be a number; got nan. Give {flag} a number such as {default}"
            )
        note = f" ({self.note})" if self.note else ""
        raise NeuroplasticError(f"{name} must be {self.describe()}{note}; got {value}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


POSITIVE = Bound(low=0, low_open=True)
NON_NEGATIVE = Bound(low=0)


def setting(
    default: Any, help: str = "", unit: str | None = None, bound: Bound | None = None
) -> Any:
    """A field of :class:`~neuroplastic.config.ExperimentConfig` with what the command line
    shows of it and what it may be: ``help`` (what it does), ``unit`` (its metavar,
    ``--stage-steps STEPS``) and, for a number, its ``bound`` (checked when a config is made; an
    integer flag whose bound leaves out 0 takes positive integers only). A string setting's
    choices are its ``Literal`` type (:data:`neuroplastic.config.CHOICES`)."""
    zero_allowed = bound is not None and bound.admits(0)
    return field(
        default=default,
        metadata={"help": help, "unit": unit, "bound": bound, "zero_allowed": zero_allowed},
    )
