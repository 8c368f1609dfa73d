"""ContiguousKVCache: the baseline that paged designs replaced - each sequence reserves a static
region of ``max_seq_len`` tokens (HF transformers' static cache, FasterTransformer/Orca-style
pre-allocation), whatever its real length.

The region is ``max_seq_len / page_size`` consecutive pages - the sequence's ``block_table`` row
lists them in order, as far as it has grown - so the same attention contract and kernels read
it; what differs is the accounting. Empty slots of a region are *reserved* (they will
be filled before the sequence ends) or *internal fragmentation* (never filled); a pool remainder
too small for a region is *external fragmentation*. Regions are taken whole at admission, so a
running sequence never needs memory and is never preempted.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from kvlab.kvcache.base import KVCache, KVCacheStats
from kvlab.kvcache.block_table import BlockTable
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.ledger import MemoryBreakdown, MemoryLedger
from kvlab.kvcache.pool import OutOfPagesError
from kvlab.kvcache.quantized_storage import paged_storage
from kvlab.kvcache.seq_state import check_power_of_two


class ContiguousKVCache(KVCache):
    """``num_slots`` static regions of ``max_seq_len`` tokens; ``external_tokens`` of the pool
    that fit no region (see ``for_tokens``).

    Examples:
        >>> cache = ContiguousKVCache.for_tokens(1000, max_seq_len=256, page_size=16)
        >>> cache.num_slots, cache.external_tokens
        (3, 232)
        >>> cache.allocate("a", 20); cache.pages("a")         # region 0: pages 0..15
        [0, 1]
        >>> cache.allocate("b", 3); cache.pages("b"), cache.stats().pages_used
        ([16], 32)
    """

    def __init__(self, *, num_slots: int, max_seq_len: int, page_size: int = 16, external_tokens: int = 0,
                 kv_format: KVFormat = PLAIN):
        check_power_of_two("page_size", page_size)
        self.kv_format = kv_format
        kv_format.page_writes(num_pages=1, page_size=page_size).check_cache("ContiguousKVCache")
        if max_seq_len < 1 or max_seq_len % page_size:
            raise ValueError(f"max_seq_len must be a positive multiple of page_size={page_size}, "
                             f"got {max_seq_len}")
        if num_slots < 1:
            raise ValueError(f"the cache holds no region of max_seq_len={max_seq_len} tokens "
                             f"(num_slots={num_slots}): its capacity is smaller than one request")
        self.page_size = page_size
        self.max_seq_len = max_seq_len
        self.num_slots = num_slots
        self.external_tokens = external_tokens
        self.pages_per_slot = max_seq_len // page_size
        self.block_table = BlockTable()
        self._free_slots: deque[int] = deque(range(num_slots))
        self._slot: dict[object, int] = {}
        self._tokens: dict[object, int] = {}
        self.ledger = MemoryLedger(num_slots * max_seq_len + external_tokens, external_tokens)

    @classmethod
    def for_tokens(cls, tokens: int, *, max_seq_len: int, page_size: int = 16) -> ContiguousKVCache:
        """As many regions as ``tokens`` of memory hold; the remainder is external fragmentation."""
        return cls(num_slots=tokens // max_seq_len, max_seq_len=max_seq_len, page_size=page_size,
                   external_tokens=tokens % max_seq_len)

    @property
    def capacity_tokens(self) -> int:
        return self.num_slots * self.max_seq_len

    def validate_request(self, *, prompt_tokens: int, step_tokens: int, total_tokens: int) -> None:
        if total_tokens > self.max_seq_len:
            room = ("lower max_tokens to at most " f"{self.max_seq_len - prompt_tokens} or raise max_seq_len"
                    if prompt_tokens < self.max_seq_len else "raise max_seq_len")
            raise ValueError(f"a request may grow to {total_tokens} tokens (prompt {prompt_tokens} + "
                             f"{total_tokens - prompt_tokens} new) but each static region holds "
                             f"max_seq_len={self.max_seq_len}; {room}")

    def max_table_pages(self, max_model_len: int) -> int:
        return -(-min(max_model_len, self.max_seq_len) // self.page_size)

    def pages_needed(self, seq_id, num_tokens: int) -> int:
        return 0 if seq_id in self._slot else self.pages_per_slot

    def num_available_pages(self, seq_id=None) -> int:
        return len(self._free_slots) * self.pages_per_slot

    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        return num_tokens <= self.max_seq_len and (seq_id in self._slot or bool(self._free_slots))

    def allocate(self, seq_id, num_tokens: int) -> None:
        if num_tokens > self.max_seq_len:
            raise ValueError(f"sequence {seq_id!r} needs {num_tokens} tokens; regions hold "
                             f"max_seq_len={self.max_seq_len}")
        if num_tokens < self._tokens.get(seq_id, 0):
            raise ValueError(f"sequence {seq_id!r} holds {self._tokens[seq_id]} tokens; allocate "
                             f"only grows (asked for {num_tokens})")
        if seq_id not in self._slot:
            if not self._free_slots:
                raise OutOfPagesError(f"no free region for sequence {seq_id!r} "
                                      f"({self.num_slots} regions, all taken)")
            self._slot[seq_id] = self._free_slots.popleft()
            self.block_table.add(seq_id)
        self._tokens[seq_id] = num_tokens
        row = self.block_table.row_of(seq_id)
        have, n = int(self.block_table.num_pages[row]), -(-num_tokens // self.page_size)
        if n > have:
            first = self._slot[seq_id] * self.pages_per_slot
            self.block_table.append(row, np.arange(first + have, first + n, dtype=np.int32))
        self.ledger.update(seq_id, allocated=self.max_seq_len, stored=num_tokens)

    def free(self, seq_id) -> None:
        slot = self._slot.pop(seq_id, None)
        self._tokens.pop(seq_id, None)
        if slot is not None:
            self._free_slots.append(slot)
            self.block_table.remove(seq_id)
            self.ledger.end(seq_id)

    def tick(self, dt: float = 1.0) -> None:
        self.ledger.tick(dt)

    def stats(self, *, detailed: bool = True) -> KVCacheStats:
        total = self.num_slots * self.pages_per_slot
        used = len(self._slot) * self.pages_per_slot
        return KVCacheStats(pages_total=total, pages_used=used, pages_free=total - used,
                            page_size=self.page_size, num_seqs=len(self._slot),
                            tokens_stored=sum(self._tokens.values()) if detailed else 0,
                            memory=self.ledger.breakdown() if detailed else MemoryBreakdown())

    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype):
        return paged_storage(self.kv_format, num_layers=num_layers,
                             num_pages=self.num_slots * self.pages_per_slot, page_size=self.page_size,
                             num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype)
