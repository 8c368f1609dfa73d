"""A host (CPU memory) tier for KV pages: where a swapped-out sequence's pages wait (vLLM's swap
space, TensorRT-LLM's host offload tier).

Host bookkeeping is a page allocator of its own; the host arrays are NumPy, one record per page
holding that page's K and V of every layer, ``[num_pages, L, 2, P, Hkv, D]`` - the blocked
layout, so a page moves as one contiguous copy each way.

Examples:
    >>> tier = HostTier(num_pages=4)
    >>> store = tier.init_storage(num_layers=2, page_size=8, num_kv_heads=1, head_dim=4, dtype="float32")
    >>> store.shape, tier.allocator.num_free
    ((4, 2, 2, 8, 1, 4), 4)
"""

from __future__ import annotations

import numpy as np

from kvlab.kvcache.pool import PageAllocator


class HostTier:
    """``num_pages`` pages of host memory for swapped-out sequences."""

    def __init__(self, num_pages: int):
        self.allocator = PageAllocator(num_pages)

    @property
    def num_pages(self) -> int:
        return self.allocator.num_pages

    def init_storage(self, *, num_layers: int, page_size: int, num_kv_heads: int, head_dim: int,
                     dtype) -> np.ndarray:
        """The host arrays: [num_pages, L, 2, P, Hkv, D] (dtype as on the device)."""
        shape = (self.num_pages, num_layers, 2, page_size, num_kv_heads, head_dim)
        return np.zeros(shape, np.dtype(dtype))
