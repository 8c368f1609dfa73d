"""Argument types and checks shared by the ``kvlab`` subcommands: a bad value is a usage error
that names what is allowed; a preset's fields are checked before anything runs, and a run that
served nothing is an error.

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
import inspect


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


def check_count(preset: str, field: str, value, param: inspect.Parameter) -> None:
    """A preset's integer fields are counts and sizes: an integer >= 1 (>= 0 where the preset's
    default is 0; None where its annotation allows it), else a ValueError naming what is allowed."""
    annotation = str(param.annotation)
    if not annotation.startswith("int") or (value is None and "None" in annotation):
        return
    low = 0 if param.default == 0 else 1
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        none = " or none" if "None" in annotation else ""
        raise ValueError(f"the {preset} preset's {field} must be an integer >= {low}{none}, got {value!r}")


def report_rejections(label: str, run, console) -> None:
    """Warn when the engine refused requests; raise ValueError when it refused every one (the
    run measured nothing)."""
    if not run.rejected:
        return
    why = run.rejected[0][1]
    if not run.records:
        raise ValueError(f"the {label} run rejected all {len(run.rejected)} requests (first: {why}); "
                         f"give it more KV capacity (--kv-tokens) or a smaller workload")
    console.print(f"  [red]{label} rejected {len(run.rejected)} requests[/red] (first: {why})")
