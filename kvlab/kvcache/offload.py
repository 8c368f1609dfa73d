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

import numpy as np

from kvlab.kvcache.pool import PageAllocator


class HostTier:
    """``num_pages`` pages of host memory for swapped-out sequences."""

    def __init__(self, num_pages: int):
        self.allocator = PageAllocator(num_pages)

    @property
    def num_pages(self) -> int:
        return self.allocator.num_pages

    def init_storage(self, page_record) -> np.ndarray:
        """The host arrays: ``[num_pages, *page_record.shape]`` of its dtype (``page_record``: the
        device storage's, a ``jax.ShapeDtypeStruct``)."""
        return np.zeros((self.num_pages, *page_record.shape), np.dtype(page_record.dtype))
