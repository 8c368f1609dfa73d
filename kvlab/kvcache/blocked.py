"""BlockedKVCache: LMDeploy TurboMind's blocked KV layout.

One block id covers the K and V of a run of ``block_tokens`` tokens for *all* layers: the device
array is ``[num_blocks, layers, 2, block_tokens, kv_heads, head_dim]``, so a block is one
contiguous piece of memory that moves or goes to a host tier in a single copy (``BlockedKVStorage
.read_block`` / ``write_block``), where a per-layer layout needs one copy per layer. The host
bookkeeping is the paged cache's, with hash-chained prefix reuse at block granularity on by
default (TurboMind's prefix caching).
"""

from __future__ import annotations

from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.paged import PagedKVCache
from kvlab.kvcache.quantized_blocked import blocked_storage


class BlockedKVCache(PagedKVCache):
    """Blocks spanning all layers; ``num_blocks`` of ``block_tokens`` tokens (a power of two).

    Examples:
        >>> cache = BlockedKVCache(num_blocks=16, block_tokens=64)
        >>> cache.admit("a", list(range(100))); cache.allocate("a", 100); cache.pages("a")
        0
        [0, 1]
        >>> import jax.numpy as jnp
        >>> cache.init_storage(num_layers=2, num_kv_heads=1, head_dim=8, dtype=jnp.float32).blocks.shape
        (16, 2, 2, 64, 1, 8)
    """

    def __init__(self, *, num_blocks: int, block_tokens: int = 64, prefix_caching: bool = True,
                 eviction=None, block_hasher=None, host_tier=None, tiers=None, kv_format: KVFormat = PLAIN):
        super().__init__(num_pages=num_blocks, page_size=block_tokens, prefix_caching=prefix_caching,
                         eviction=eviction, block_hasher=block_hasher, host_tier=host_tier, tiers=tiers,
                         kv_format=kv_format)
        self.writes.check_cache("BlockedKVCache")

    @classmethod
    def for_tokens(cls, tokens: int, *, block_tokens: int = 64, **kwargs) -> BlockedKVCache:
        """A cache holding at least ``tokens`` tokens."""
        return cls(num_blocks=max(1, -(-tokens // block_tokens)), block_tokens=block_tokens, **kwargs)

    @property
    def block_tokens(self) -> int:
        return self.page_size

    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype):
        return blocked_storage(self.kv_format, num_layers=num_layers, num_pages=self.allocator.num_pages,
                               page_size=self.page_size, num_kv_heads=num_kv_heads, head_dim=head_dim,
                               dtype=dtype)
