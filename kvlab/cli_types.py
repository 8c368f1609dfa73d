"""Argument types shared by the ``kvlab`` subcommands: a bad value is a usage error that names
what is allowed.

Examples:
    >>> int_in(1)("3")
    3
    >>> int_in(1, 8)("9")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be an integer from 1 to 8, got 9
"""

from __future__ import annotations

import argparse


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound for None), else a usage error
    naming the allowed range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {value}")
        return value

    return parse
