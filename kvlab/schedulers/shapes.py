"""Padding policies: the shapes a step's batch is padded to, one policy for the model runner and
the cost model alike (so a simulated step is charged for the padding the real one computes).

A step uses ``tokens`` query rows, ``rows`` sequence rows and ``pages`` page-table columns; the
policy pads each up to a bucket within the limits, and says which static batch flags stay exact.
``BucketedShapes`` (the default) pads to powers of two, so the number of compiled step shapes
is bounded by the product of the bucket counts; ``FixedShapes`` (the persistent batch) pads
every step to the limits and fixes the flags, so the step compiles once.

Examples:
    >>> limits = StepShape(tokens=512, rows=64, pages=128)
    >>> BucketedShapes().pad(StepShape(tokens=37, rows=5, pages=9), limits)
    StepShape(tokens=64, rows=8, pages=16)
    >>> FixedShapes().pad(StepShape(tokens=37, rows=5, pages=9), StepShape(tokens=768, rows=64, pages=100))
    StepShape(tokens=1024, rows=64, pages=128)
"""

from __future__ import annotations

import dataclasses


def next_pow2(n: int, lo: int = 1) -> int:
    """The smallest power of two >= max(n, lo)."""
    n = max(n, lo, 1)
    return 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class StepShape:
    """Query tokens, sequence rows and page-table columns of one step."""

    tokens: int
    rows: int
    pages: int


@dataclasses.dataclass(frozen=True)
class BucketedShapes:
    """Each dimension padded to the next power of two (tokens at least ``min_tokens``)."""

    min_tokens: int = 16

    def pad(self, used: StepShape, limits: StepShape) -> StepShape:
        """The padded shape of a step using ``used`` (never above the padded ``limits``)."""
        return StepShape(tokens=min(next_pow2(used.tokens, self.min_tokens), self.pad_limit(limits).tokens),
                         rows=min(next_pow2(used.rows), self.pad_limit(limits).rows),
                         pages=min(next_pow2(used.pages), self.pad_limit(limits).pages))

    def pad_limit(self, limits: StepShape) -> StepShape:
        """The largest padded shape."""
        return StepShape(tokens=next_pow2(limits.tokens, self.min_tokens), rows=next_pow2(limits.rows),
                         pages=next_pow2(limits.pages))

    def static_flags(self, *, decode_only: bool, has_decodes: bool) -> tuple[bool, bool]:
        """The batch's static flags as the step compiles them (kept as they are)."""
        return decode_only, has_decodes


@dataclasses.dataclass(frozen=True)
class FixedShapes(BucketedShapes):
    """Every step padded to the largest bucket of each dimension, flags fixed (one program)."""

    def pad(self, used: StepShape, limits: StepShape) -> StepShape:
        return self.pad_limit(limits)

    def static_flags(self, *, decode_only: bool, has_decodes: bool) -> tuple[bool, bool]:
        return False, True
