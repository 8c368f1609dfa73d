"""KV caches: host bookkeeping (pages, tables, prefix indexes) and device storage pytrees."""

from kvlab.kvcache.base import KVCache, KVCacheStats
from kvlab.kvcache.block_hash import BuiltinBlockHasher, Sha256BlockHasher
from kvlab.kvcache.block_table import BlockTable, TableChanges
from kvlab.kvcache.blocked import BlockedKVCache
from kvlab.kvcache.blocked_storage import BlockedKVStorage
from kvlab.kvcache.circular import CircularKVCache
from kvlab.kvcache.contiguous import ContiguousKVCache
from kvlab.kvcache.eviction import LFU, LRU, PriorityLRU
from kvlab.kvcache.ledger import MemoryBreakdown, MemoryLedger
from kvlab.kvcache.offload import HostTier, SwapSpace
from kvlab.kvcache.paged import PagedKVCache
from kvlab.kvcache.pool import OutOfPagesError, PageAllocator
from kvlab.kvcache.radix import RadixKVCache
from kvlab.kvcache.storage import PagedKVStorage
from kvlab.kvcache.tier_swap import SwapInTiers

__all__ = ["BlockTable", "BlockedKVCache", "BlockedKVStorage", "BuiltinBlockHasher", "CircularKVCache",
           "ContiguousKVCache", "HostTier", "KVCache", "KVCacheStats", "LFU", "LRU", "MemoryBreakdown",
           "MemoryLedger", "OutOfPagesError", "PageAllocator", "PagedKVCache", "PagedKVStorage",
           "PriorityLRU", "RadixKVCache", "Sha256BlockHasher", "SwapInTiers", "SwapSpace", "TableChanges"]
