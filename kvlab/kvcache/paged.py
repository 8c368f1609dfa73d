"""PagedKVCache: vLLM's paged KV memory - fixed-size pages from one shared pool, a page table
per sequence, waste only in each sequence's last page."""

from __future__ import annotations

from kvlab.kvcache.base import KVCache, KVCacheStats
from kvlab.kvcache.pool import OutOfPagesError, PageAllocator
from kvlab.kvcache.storage import PagedKVStorage


class PagedKVCache(KVCache):
    """Paged KV cache (no prefix caching yet).

    Example:
        >>> cache = PagedKVCache(num_pages=8, page_size=4)
        >>> cache.allocate("a", 6)
        >>> cache.pages("a"), cache.stats().tokens_stored
        ([0, 1], 6)
        >>> cache.free("a"); cache.stats().pages_free
        8
    """

    def __init__(self, *, num_pages: int, page_size: int = 16):
        if page_size < 1 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two >= 1, got {page_size}")
        self.page_size = page_size
        self.allocator = PageAllocator(num_pages)
        self._pages: dict[object, list[int]] = {}
        self._tokens: dict[object, int] = {}

    @classmethod
    def for_tokens(cls, tokens: int, *, page_size: int = 16) -> PagedKVCache:
        """A cache holding at least ``tokens`` tokens."""
        return cls(num_pages=max(1, -(-tokens // page_size)), page_size=page_size)

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_pages * self.page_size

    def _pages_needed(self, seq_id, num_tokens: int) -> int:
        have = len(self._pages.get(seq_id, ()))
        return max(0, -(-num_tokens // self.page_size) - have)

    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        return self._pages_needed(seq_id, num_tokens) <= self.allocator.num_free

    def allocate(self, seq_id, num_tokens: int) -> None:
        if num_tokens < self._tokens.get(seq_id, 0):
            raise ValueError(f"sequence {seq_id!r} holds {self._tokens[seq_id]} tokens; "
                             f"allocate only grows (asked for {num_tokens})")
        need = self._pages_needed(seq_id, num_tokens)
        if need > self.allocator.num_free:
            raise OutOfPagesError(f"sequence {seq_id!r} needs {need} more pages for {num_tokens} "
                                  f"tokens, {self.allocator.num_free} free")
        self._pages.setdefault(seq_id, []).extend(self.allocator.allocate(need))
        self._tokens[seq_id] = num_tokens

    def match_prefix(self, token_ids) -> int:
        return 0

    def free(self, seq_id) -> None:
        pages = self._pages.pop(seq_id, None)
        self._tokens.pop(seq_id, None)
        if pages:
            self.allocator.decref(reversed(pages))

    def pages(self, seq_id) -> list[int]:
        return self._pages.get(seq_id, [])

    def num_tokens(self, seq_id) -> int:
        return self._tokens.get(seq_id, 0)

    def stats(self) -> KVCacheStats:
        a = self.allocator
        return KVCacheStats(pages_total=a.num_pages, pages_used=a.num_used, pages_free=a.num_free,
                            page_size=self.page_size, num_seqs=len(self._pages),
                            tokens_stored=sum(self._tokens.values()))

    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype) -> PagedKVStorage:
        return PagedKVStorage.zeros(num_layers=num_layers, num_pages=self.allocator.num_pages,
                                    page_size=self.page_size, num_kv_heads=num_kv_heads,
                                    head_dim=head_dim, dtype=dtype)
