"""KV tiers below the GPU: fixed-capacity stores of page records keyed by block hash (host memory,
local disk), chained fastest first, with offload policies as strategy objects."""

from kvlab.kvcache.tiers.array_tier import ArrayTier
from kvlab.kvcache.tiers.disk import DiskTier
from kvlab.kvcache.tiers.hierarchy import ChainStats, TierChain
from kvlab.kvcache.tiers.host import HostMemoryTier
from kvlab.kvcache.tiers.pinned import PinnedHostTier
from kvlab.kvcache.tiers.policy import AbovePriority, OffloadPolicy, WriteBackOnEviction, WriteThrough
from kvlab.kvcache.tiers.protocol import Evicted, KVTier, TierStats

__all__ = ["AbovePriority", "ArrayTier", "ChainStats", "DiskTier", "Evicted", "HostMemoryTier", "KVTier",
           "OffloadPolicy", "PinnedHostTier", "TierChain", "TierStats", "WriteBackOnEviction", "WriteThrough"]
