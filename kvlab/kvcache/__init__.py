"""KV caches: host bookkeeping (pages, tables) and device storage pytrees."""

from kvlab.kvcache.base import KVCache, KVCacheStats
from kvlab.kvcache.paged import PagedKVCache
from kvlab.kvcache.pool import OutOfPagesError, PageAllocator
from kvlab.kvcache.storage import PagedKVStorage

__all__ = ["KVCache", "KVCacheStats", "OutOfPagesError", "PageAllocator", "PagedKVCache",
           "PagedKVStorage"]
