"""CircularKVCache: TensorRT-LLM's cyclic KV cache and Mistral's rolling buffer, with optional
StreamingLLM attention sinks.

Each sequence owns a fixed set of pages: ``sink_pages`` for its first tokens (kept forever) and a
ring of ``ring_pages`` that later tokens cycle through. Logical page ``i`` of the sequence maps to
sink page ``i`` while ``i < sink_pages`` and to ring page ``(i - sink_pages) % ring_pages`` after,
so the sequence's ``block_table`` row holds that logical -> physical mapping - an ordinary
page-table row, longer than the pages behind it, written a few entries at a time as the sequence
grows - and any kernel of the attention contract reads it unchanged. Pages that hold overwritten
tokens are only read for keys outside the window, which the window mask hides. The ring is large
enough when a step of ``q`` new tokens never overwrites a key some query of that step still
sees: ``ring_pages * page_size >= window + q - 1``; so steps are limited to ``max_step_tokens``
new tokens per sequence (a whole prompt, under whole-prompt prefill). Memory per sequence is constant,
reserved at admission (a running sequence never needs another page, so it is never preempted),
however long it runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvlab.kvcache.base import KVCache, KVCacheStats
from kvlab.kvcache.block_table import BlockTable
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.ledger import MemoryBreakdown, MemoryLedger
from kvlab.kvcache.pool import OutOfPagesError, PageAllocator
from kvlab.kvcache.quantized_storage import paged_storage
from kvlab.kvcache.seq_state import check_power_of_two


class CircularKVCache(KVCache):
    """Window-bounded KV memory per sequence.

    window: attention window in tokens (counting the query's own token); num_sink_tokens: leading
    tokens always visible (StreamingLLM); max_step_tokens: the most new tokens a sequence may
    compute in one step (default ``window``).

    Examples:
        >>> cache = CircularKVCache(num_pages=16, page_size=4, window=8, num_sink_tokens=2)
        >>> cache.sink_pages, cache.ring_pages           # ring: ceil((8 + 8 - 1) / 4)
        (1, 4)
        >>> cache.allocate("a", 5); [cache.allocate("a", n) for n in range(6, 31)][-1]
        >>> cache.pages("a"), cache.stats().pages_free   # logical pages 5, 6, 7 wrap around
        ([0, 1, 2, 3, 4, 1, 2, 3], 11)
    """

    def __init__(self, *, num_pages: int, page_size: int = 16, window: int, num_sink_tokens: int = 0,
                 max_step_tokens: int | None = None, kv_format: KVFormat = PLAIN):
        check_power_of_two("page_size", page_size)
        self.kv_format = kv_format
        kv_format.page_writes(num_pages=1, page_size=page_size).check_cache("CircularKVCache")
        if window < 1:
            raise ValueError(f"window must be >= 1 token, got {window}")
        if num_sink_tokens < 0:
            raise ValueError(f"num_sink_tokens must be >= 0, got {num_sink_tokens}")
        self.page_size = page_size
        self.window = window
        self.num_sink_tokens = num_sink_tokens
        self.max_step_tokens = window if max_step_tokens is None else max_step_tokens
        if self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be >= 1, got {max_step_tokens}")
        self.sink_pages = -(-num_sink_tokens // page_size)
        self.ring_pages = -(-(window + self.max_step_tokens - 1) // page_size)
        self.pages_per_seq = self.sink_pages + self.ring_pages
        if self.pages_per_seq > num_pages:
            raise ValueError(f"one sequence needs {self.pages_per_seq} pages (sinks "
                             f"{self.sink_pages} + ring {self.ring_pages} for window {window} and "
                             f"steps of {self.max_step_tokens} tokens) but the cache has {num_pages}")
        self.allocator = PageAllocator(num_pages)
        self.block_table = BlockTable()
        self._own: dict[object, np.ndarray] = {}     # seq -> its sink + ring pages (physical)
        self._tokens: dict[object, int] = {}
        self.ledger = MemoryLedger(num_pages * page_size)

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_pages * self.page_size

    @property
    def tokens_per_seq(self) -> int:
        """Slots each sequence holds, whatever its length."""
        return self.pages_per_seq * self.page_size

    def validate_request(self, *, prompt_tokens: int, step_tokens: int, total_tokens: int) -> None:
        if step_tokens > self.max_step_tokens:
            raise ValueError(f"{step_tokens} tokens of a {prompt_tokens}-token prompt would be "
                             f"computed in one step, but this circular cache takes at most "
                             f"max_step_tokens={self.max_step_tokens} new tokens per sequence per "
                             f"step; use a ChunkedScheduler (its chunks respect that limit) or "
                             f"raise max_step_tokens")

    def attention_options(self, options, max_model_len: int):
        if self.window > max_model_len:
            raise ValueError(f"window of {self.window} tokens is larger than the model's context of "
                             f"{max_model_len}: nothing would ever leave it; use PagedKVCache")
        window = min(self.window, options.sliding_window or self.window)
        return dataclasses.replace(options, sliding_window=window, num_sink_tokens=self.num_sink_tokens)

    def max_table_pages(self, max_model_len: int) -> int:
        return -(-max_model_len // self.page_size)

    def pages_needed(self, seq_id, num_tokens: int) -> int:
        return 0 if seq_id in self._own else self.pages_per_seq

    def num_available_pages(self, seq_id=None) -> int:
        return self.allocator.num_free

    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        """Whether the ring has room and the growth fits one step (``max_step_tokens``)."""
        have = self._tokens.get(seq_id, 0)
        if not have <= num_tokens <= have + self.max_step_tokens:
            return False
        return self.pages_needed(seq_id, num_tokens) <= self.allocator.num_free

    def allocate(self, seq_id, num_tokens: int) -> None:
        have = self._tokens.get(seq_id, 0)
        if num_tokens < have:
            raise ValueError(f"sequence {seq_id!r} holds {have} tokens; allocate only grows "
                             f"(asked for {num_tokens})")
        if num_tokens - have > self.max_step_tokens:
            raise ValueError(f"sequence {seq_id!r} grows by {num_tokens - have} tokens in one step; "
                             f"this circular cache allows max_step_tokens={self.max_step_tokens}")
        if seq_id not in self._own:
            if self.allocator.num_free < self.pages_per_seq:
                raise OutOfPagesError(f"sequence {seq_id!r} needs {self.pages_per_seq} pages, "
                                      f"{self.allocator.num_free} free")
            self._own[seq_id] = np.asarray(self.allocator.allocate(self.pages_per_seq), np.int32)
            self.block_table.add(seq_id)
        self._tokens[seq_id] = num_tokens
        self._map_pages(seq_id, -(-num_tokens // self.page_size))
        self.ledger.update(seq_id, allocated=self.tokens_per_seq,
                           stored=min(num_tokens, self.tokens_per_seq))

    def _map_pages(self, seq_id, n: int) -> None:
        """Extend the sequence's row to ``n`` logical pages: page ``i`` maps to sink page ``i``
        or ring page ``(i - sink_pages) % ring_pages`` (only the new entries are written)."""
        row = self.block_table.row_of(seq_id)
        have = int(self.block_table.num_pages[row])
        if n > have:
            s, i = self.sink_pages, np.arange(have, n)
            logical = np.where(i < s, i, s + (i - s) % self.ring_pages)
            self.block_table.append(row, self._own[seq_id][logical])

    def free(self, seq_id) -> None:
        own = self._own.pop(seq_id, None)
        self._tokens.pop(seq_id, None)
        if own is not None:
            self.allocator.decref(reversed(own.tolist()))
            self.block_table.remove(seq_id)
            self.ledger.end(seq_id)

    def tick(self, dt: float = 1.0) -> None:
        self.ledger.tick(dt)

    def stats(self, *, detailed: bool = True) -> KVCacheStats:
        a = self.allocator
        stored = sum(min(n, self.tokens_per_seq) for n in self._tokens.values()) if detailed else 0
        return KVCacheStats(pages_total=a.num_pages, pages_used=a.num_used, pages_free=a.num_free,
                            page_size=self.page_size, num_seqs=len(self._own), tokens_stored=stored,
                            memory=self.ledger.breakdown() if detailed else MemoryBreakdown())

    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype):
        return paged_storage(self.kv_format, num_layers=num_layers, num_pages=self.allocator.num_pages,
                                    page_size=self.page_size, num_kv_heads=num_kv_heads,
                                    head_dim=head_dim, dtype=dtype)
