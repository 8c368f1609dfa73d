"""The contract of a format that quantizes whole pages (KIVI), which the kernels read a page a tile."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax


@runtime_checkable
class PageGroupFormat(Protocol):
    """A format that quantizes whole pages (KIVI: ``formats.kivi``): keys per channel over a page
    of ``group_size`` tokens, the page filled in full precision first (``StagedWrites``). The
    kernels read it a page a tile; shapes as in ``kivi.py``."""

    name: str
    group_size: int
    tile_parts: int

    def round_trip_key_tile(self, parts: tuple[jax.Array, ...], dtype, *,
                            reciprocal=None) -> tuple[jax.Array, ...]:
        """A full page's keys ``[G, D / tile_parts]`` per part as stored once sealed
        (``reciprocal(x)``: a correctly rounded ``1 / x`` for a kernel whose division is not)."""
        ...

    def round_trip_value_tile(self, parts: tuple[jax.Array, ...], dtype, *,
                              reciprocal=None) -> tuple[jax.Array, ...]:
        """A full page's values ``[G, D / tile_parts]`` per part as stored once sealed."""
        ...

    def tile_tokens(self, block_k: int, page_size: int) -> int:
        """Tokens a kernel's KV tile holds: the page."""
        ...
