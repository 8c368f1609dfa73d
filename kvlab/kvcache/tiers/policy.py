"""Offload policies: small strategy objects that decide when a KV page goes down a tier.

Two moments ask: ``offload_on_insert(priority)``, when the GPU cache first indexes a full page
(write-through copies it down then), and ``offload_on_evict(priority)``, when a page leaves a level
to make room - the GPU cache evicting a cached page the tiers do not hold, or ``TierChain``
demoting a record one of its tiers evicted into the next tier. ``priority`` is the page's retention
priority (the highest of the requests that used it, as ``PriorityLRU`` reads it).

- ``WriteBackOnEviction()``: a page goes down only when it is evicted (TensorRT-LLM's host
  offload, HiCache's ``write_back``); nothing is copied while it is on the GPU.
- ``WriteThrough()``: a page is copied down as soon as it is indexed (HiCache's
  ``write_through``), so an eviction costs no copy; a page the tiers dropped meanwhile is
  written again when the GPU evicts it.
- ``AbovePriority(min_priority=...)``: only pages at or above ``min_priority`` go down
  (TensorRT-LLM's ``secondary_offload_min_priority``), at the moments of its ``base`` policy
  (write-back by default); the others are dropped.

Examples:
    >>> policy = AbovePriority(min_priority=35)
    >>> policy.offload_on_evict(50), policy.offload_on_evict(10), policy.offload_on_insert(50)
    (True, False, False)
    >>> AbovePriority(min_priority=35, base=WriteThrough()).offload_on_insert(50)
    True
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Protocol, runtime_checkable


@runtime_checkable
class OffloadPolicy(Protocol):
    """When a page goes down a tier; ``priority`` is the page's retention priority (an int)."""

    def offload_on_insert(self, priority: int) -> bool:
        """Copy a page down when the GPU cache first indexes it?"""
        ...

    def offload_on_evict(self, priority: int) -> bool:
        """Move a page down (instead of dropping it) when its level evicts it?"""
        ...


@dataclasses.dataclass(frozen=True)
class WriteBackOnEviction:
    """Down only on eviction."""

    def offload_on_insert(self, priority: int) -> bool:
        return False

    def offload_on_evict(self, priority: int) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class WriteThrough:
    """Down when indexed; again on eviction if the tiers dropped it meanwhile."""

    def offload_on_insert(self, priority: int) -> bool:
        return True

    def offload_on_evict(self, priority: int) -> bool:
        return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class AbovePriority:
    """Only pages with priority >= ``min_priority`` go down, when ``base`` would send them."""

    min_priority: int
    base: OffloadPolicy = WriteBackOnEviction()

    def __post_init__(self):
        if isinstance(self.min_priority, bool) or not isinstance(self.min_priority, numbers.Integral):
            raise ValueError(f"AbovePriority needs an int min_priority (a retention priority such as "
                             f"TensorRT-LLM's 0-100), got {self.min_priority!r}")
        if not isinstance(self.base, OffloadPolicy):
            raise ValueError(f"AbovePriority's base must be an offload policy (WriteBackOnEviction() or "
                             f"WriteThrough()), got {self.base!r}")

    def offload_on_insert(self, priority: int) -> bool:
        return priority >= self.min_priority and self.base.offload_on_insert(priority)

    def offload_on_evict(self, priority: int) -> bool:
        return priority >= self.min_priority and self.base.offload_on_evict(priority)
