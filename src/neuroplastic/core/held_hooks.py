"""Forward hooks held on a model until removed: what an ablation and an erasure share.

A removal registers one hook per hook point it changes and must be able to say whether all are
still registered (``model.reset_hooks()`` drops non-permanent hooks behind a handle's back) and
to take them all off again, also as a context manager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Held = TypeVar("Held", bound="HeldHooks")


class HeldHooks:
    """Hooks added with :meth:`_hold`, removed together by :meth:`remove` or a ``with`` block."""

    def __init__(self) -> None:
        self._handles: list[tuple[Any, Any]] = []

    def _hold(self, point: Any, fn: Callable[..., Any], permanent: bool) -> None:
        """Register ``fn`` on the hook point ``point``; ``permanent`` survives reset_hooks()."""
        handle = point.add_hook(fn, dir="fwd", is_permanent=permanent)
        self._handles.append((point, handle))

    @property
    def active(self) -> bool:
        """Whether every hook is still registered (``model.reset_hooks()`` removes
        non-permanent ones behind this handle's back)."""
        return bool(self._handles) and all(h in p.fwd_hooks for p, h in self._handles)

    def remove(self) -> None:
        for point, handle in self._handles:
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)
        self._handles = []

    def __enter__(self: Held) -> Held:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
