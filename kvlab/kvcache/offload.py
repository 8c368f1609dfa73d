"""A host (CPU memory) tier for KV pages: where a swapped-out sequence's pages wait (vLLM's swap
space, TensorRT-LLM's host offload tier).

Host bookkeeping is a page allocator of its own; the host arrays are NumPy, one record per page
holding that page's K and V of every layer as the device storage describes it (its
``page_record``: ``[L, 2, P, Hkv, D]`` for plain pages, the stored bytes of a quantized page), so a
page moves as one contiguous copy each way, quantized pages unchanged.

Examples:
    >>> tier = HostTier(num_pages=4)
    >>> import jax
    >>> store = tier.init_storage(jax.ShapeDtypeStruct((2, 2, 8, 1, 4), "float32"))
    >>> store.shape, tier.allocator.num_free
    ((4, 2, 2, 8, 1, 4), 4)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from kvlab.kvcache.pool import PageAllocator


@runtime_checkable
class SwapSpace(Protocol):
    """Where preemption by swap keeps a sequence's pages while it is away (a cache's
    ``host_tier``). ``store`` and ``restore`` return the page copies the engine makes before the
    step, as ``(from, to)`` pairs; a space whose copies travel as the cache's tier moves returns
    none. ``handles`` are the space's names for the stored pages, one per page, in order."""

    num_pages: int                  # capacity, in pages
    num_used: int                   # pages holding swapped-out sequences

    def bind(self, tiers) -> None:
        """Called once by the cache that owns the space, with its ``TierReuse`` (or None)."""
        ...

    def can_hold(self, num_pages: int) -> bool:
        ...

    def store(self, pages: list[int]) -> tuple[list, list[tuple[int, int]]]:
        """Take device ``pages``: (handles, (device page, host page) copies)."""
        ...

    def restore(self, handles: list, pages: list[int]) -> list[tuple[int, int]]:
        """Give stored ``handles`` back into device ``pages``; (host page, device page) copies."""
        ...

    def release(self, handles: list) -> None:
        """Forget stored ``handles`` (their sequence ended while away)."""
        ...

    def init_storage(self, page_record) -> np.ndarray | None:
        """The host arrays the engine copies into, or None when the copies are tier moves."""
        ...


class HostTier:
    """``num_pages`` pages of host memory for swapped-out sequences, a pool of their own."""

    def __init__(self, num_pages: int):
        self.allocator = PageAllocator(num_pages)

    @property
    def num_pages(self) -> int:
        return self.allocator.num_pages

    @property
    def num_used(self) -> int:
        return self.allocator.num_used

    def bind(self, tiers) -> None:
        """Nothing to bind: the host tier has pages of its own."""

    def can_hold(self, num_pages: int) -> bool:
        return num_pages <= self.allocator.num_free

    def store(self, pages: list[int]) -> tuple[list, list[tuple[int, int]]]:
        hosts = self.allocator.allocate(len(pages))
        return hosts, list(zip(pages, hosts))

    def restore(self, handles: list, pages: list[int]) -> list[tuple[int, int]]:
        self.allocator.decref(handles)
        return list(zip(handles, pages))

    def release(self, handles: list) -> None:
        self.allocator.decref(handles)

    def init_storage(self, page_record) -> np.ndarray:
        """The host arrays: ``[num_pages, *page_record.shape]`` of its dtype (``page_record``: the
        device storage's, a ``jax.ShapeDtypeStruct``)."""
        return np.zeros((self.num_pages, *page_record.shape), np.dtype(page_record.dtype))
