"""The host state a pool cache keeps per sequence (``SeqState``), and the page-size check the
caches share."""

from __future__ import annotations

import dataclasses


def check_power_of_two(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is a power of two >= 1."""
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1 (the attention kernels split "
                         f"positions into page and offset with shifts), got {value!r}")


@dataclasses.dataclass(eq=False)
class SeqState:
    """Host state of one sequence (its pages are its ``block_table`` row ``row``).
    ``num_tokens``: slots it may use (allocated); ``hit_tokens``: the prefix reused at admission;
    ``started``: it allocated at least once (its admission counted)."""

    row: int
    num_tokens: int = 0
    salt: object = None
    priority: int = 0
    readmission: bool = False
    query_tokens: int = 0
    hit_tokens: int = 0
    shared_pages: int = 0             # pages it uses but another sequence computed (accounting)
    started: bool = False
    block_hashes: list = dataclasses.field(default_factory=list)   # hash-chained caches
    num_indexed: int = 0              # leading full pages already in the prefix index
    host_pages: list = dataclasses.field(default_factory=list)     # swapped out: host page per entry
    tier_hits: list = dataclasses.field(default_factory=list)     # blocks to load from a tier at start
    node: object = None               # radix: deepest tree node this sequence locks (or holds)
    tokens: object = None             # radix: the token sequence, for indexing at free
    num_computed: int = 0
