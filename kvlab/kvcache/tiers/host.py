"""A KV tier in host (CPU) memory: one NumPy array of page records, TensorRT-LLM's host offload
tier and the first level of SGLang's HiCache below the GPU.

Unlike ``kvlab.kvcache.offload.HostTier`` (the swap space of preempted sequences, addressed by
page id), this tier is keyed by block hash and evicts by its own policy when full.

Examples:
    >>> import jax, numpy as np
    >>> from kvlab.kvcache.tiers import HostMemoryTier
    >>> tier = HostMemoryTier(num_pages=2, page_record=jax.ShapeDtypeStruct((2, 3), "float32"))
    >>> page = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> tier.put(b"block-a", page), tier.put(b"block-b", page + 1)
    ([], [])
    >>> tier.get(b"block-a")[1].tolist()              # a use: block-b is now least recent
    [3.0, 4.0, 5.0]
    >>> [victim.key for victim in tier.put(b"block-c", page + 2)]
    [b'block-b']
    >>> s = tier.stats()
    >>> s.pages_used, s.pages_free, s.hits, s.evictions
    (2, 0, 1, 1)
"""

from __future__ import annotations

import numpy as np

from kvlab.kvcache.eviction import LRU
from kvlab.kvcache.tiers.array_tier import ArrayTier


class HostMemoryTier(ArrayTier):
    """``num_pages`` records of ``page_record`` (a ``jax.ShapeDtypeStruct``; or None, bound later
    by ``bind``) in a NumPy array, evicted by ``eviction`` (``LRU()``, the default, ``LFU()`` or
    ``PriorityLRU()``) when full. The array is ``np.zeros`` (the operating system commits its
    memory as pages are first written)."""

    def __init__(self, num_pages: int, page_record=None, eviction=None):
        super().__init__(num_pages, page_record, LRU() if eviction is None else eviction)

    def _new_records(self, shape, dtype) -> np.ndarray:
        return np.zeros((self.num_pages, *shape), dtype)
