"""The ``neuroplastic`` command."""

from neuroplastic.cli.commands import main

__all__ = ["main"]
