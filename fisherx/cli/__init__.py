"""The ``fisherx`` command: every subcommand's arguments live in this package."""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
