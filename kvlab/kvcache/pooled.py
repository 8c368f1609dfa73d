"""PagePoolCache: the host bookkeeping shared by the caches that hand out pages of one pool
(paged, blocked, radix): a ``BlockTable`` row per sequence (the one record of its pages), growth
page by page, hooks for the prefix caches, counters and the memory ledger. Swapping to a host
tier is added by ``swap.SwappablePoolCache``.

Reference counting: a sequence holds one reference on each page of its row; a prefix cache holds
one reference on each page it indexes. A page whose only reference is the cache's is *cached*
(reusable, evictable); a page with no reference is free. The memory ledger charges a shared page
to the sequence that computed it; once that one ends, the page's other users are not charged for
it (a small undercount of *stored* while prefixes are shared).

Admission is tentative until the sequence starts (its first ``allocate``): ``_reuse_prefix``
attaches the cached prefix and holds its blocks without touching their eviction bookkeeping;
``_start_reuse`` makes the use real (recency, reuse counts, priority); ``_rollback_reuse`` undoes
the hold when the sequence is freed before it started.
"""

from __future__ import annotations

from kvlab.kvcache.base import KVCache, KVCacheStats
from kvlab.kvcache.block_table import BlockTable
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.ledger import MemoryBreakdown, MemoryLedger
from kvlab.kvcache.pool import OutOfPagesError, PageAllocator
from kvlab.kvcache.seq_state import SeqState, check_power_of_two


class PagePoolCache(KVCache):
    """Sequences grow page by page from one reference-counted pool of ``num_pages`` pages."""

    def __init__(self, *, num_pages: int, page_size: int, host_tier=None, kv_format: KVFormat = PLAIN):
        check_power_of_two("page_size", page_size)
        self.page_size = page_size
        self.kv_format = kv_format
        self.allocator = PageAllocator(num_pages)
        self.writes = kv_format.page_writes(num_pages=num_pages, page_size=page_size)  # in place, or staged
        self.host_tier = host_tier
        self.block_table = BlockTable()
        self._seqs: dict[object, SeqState] = {}
        self.ledger = MemoryLedger(num_pages * page_size)
        self.clock = 0                    # logical time of last use, for eviction policies
        self._prompt_tokens = self._hit_tokens = 0
        self._readmitted_prompt_tokens = self._readmitted_hit_tokens = 0
        self.evictions = 0
        self._tiered = None               # a TierReuse when prefix blocks go below the GPU

    @property
    def tiers(self):
        """The ``TierChain`` below the GPU, or None."""
        return None if self._tiered is None else self._tiered.chain

    @classmethod
    def for_tokens(cls, tokens: int, *, page_size: int = 16, **kwargs):
        """A cache holding at least ``tokens`` tokens."""
        return cls(num_pages=max(1, -(-tokens // page_size)), page_size=page_size, **kwargs)

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_pages * self.page_size

    # ---- hooks for prefix caches ---------------------------------------------------------------
    def _reuse_prefix(self, seq: SeqState, token_ids) -> int:
        """Attach cached pages to ``seq``'s row (taking references and tentative holds, leaving
        the eviction bookkeeping alone); return the tokens reused."""
        return 0

    def _start_reuse(self, seq: SeqState) -> None:
        """``seq`` starts: its attached prefix counts as used now (recency, counts, priority)."""

    def _rollback_reuse(self, seq: SeqState) -> None:
        """``seq`` is freed before it started: drop its holds (page references are dropped by
        the caller), restoring the blocks' eviction state exactly."""

    def _num_reclaimable(self) -> int:
        """Pages that eviction could free now."""
        return 0

    def _reclaim(self, n: int) -> None:
        """Evict until ``n`` more pages are free (or nothing is evictable)."""

    def _num_cached_pages(self) -> int:
        return 0

    def _drop_cached(self) -> None:
        """Forget every cached block and drop its page reference (no sequence is live)."""

    def _before_release(self, seq_id, seq: SeqState) -> None:
        """Called by ``free`` before a started sequence's page references are dropped."""

    def _after_release(self, pages: list[int]) -> None:
        """Called by ``free`` and ``swap_out`` with the pages that still have references."""

    def _placed(self, seq: SeqState, first: int, pages: list[int]) -> None:
        """``allocate`` appended fresh ``pages`` to ``seq``'s row from column ``first``."""

    # ---- rows ----------------------------------------------------------------------------------
    def _new_seq(self, seq_id, **fields) -> SeqState:
        seq = self._seqs[seq_id] = SeqState(row=self.block_table.add(seq_id), **fields)
        return seq

    def _num_pages(self, seq: SeqState) -> int:
        return self.block_table.num_pages.item(seq.row)

    def _row(self, seq: SeqState):
        """The sequence's pages: a view of its block-table row."""
        return self.block_table.pages(seq.row)

    # ---- contract --------------------------------------------------------------------------------
    def admit(self, seq_id, token_ids, *, salt=None, priority: int = 0, readmission: bool = False) -> int:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} is already in the cache; free it first")
        seq = self._new_seq(seq_id, salt=salt, priority=priority, readmission=readmission,
                            query_tokens=len(token_ids))
        hit = self._reuse_prefix(seq, token_ids)
        seq.num_tokens = seq.hit_tokens = hit
        seq.shared_pages = hit // self.page_size - len(seq.tier_hits)    # tier hits: loaded, its own
        return hit

    def _pages_needed(self, seq: SeqState | None, num_tokens: int) -> int:
        have = self._num_pages(seq) if seq is not None else 0
        return max(0, -(-num_tokens // self.page_size) - have)

    def pages_needed(self, seq_id, num_tokens: int) -> int:
        return self._pages_needed(self._seqs.get(seq_id), num_tokens)

    def num_available_pages(self, seq_id=None) -> int:
        return self.allocator.num_free + self._num_reclaimable()

    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        seq = self._seqs.get(seq_id)
        if seq is not None and num_tokens <= self.block_table.num_pages.item(seq.row) * self.page_size:
            return True                                   # fits its last page (most decodes)
        need = self._pages_needed(seq, num_tokens)
        full = seq.num_tokens // self.page_size if seq is not None else 0
        staged = need - self._loaded(seq, need)
        return need <= self.num_available_pages(seq_id) and staged <= self.writes.num_free(seq_id, full)

    @staticmethod
    def _loaded(seq: SeqState | None, need: int) -> int:
        """Of ``need`` fresh pages, those a tier's blocks are loaded into (they hold final bytes,
        so they take no staging page): all the tier hits, since an admitted sequence's first
        allocate grows past its whole hit."""
        return 0 if seq is None else min(len(seq.tier_hits), need)

    def drain_seals(self) -> list[tuple[int, int]]:
        return self.writes.drain()

    def drain_tier_moves(self) -> list:
        return [] if self._tiered is None else self._tiered.drain()

    def validate_request(self, *, prompt_tokens: int, step_tokens: int, total_tokens: int) -> None:
        super().validate_request(prompt_tokens=prompt_tokens, step_tokens=step_tokens,
                                 total_tokens=total_tokens)
        self.writes.check_step(step_tokens)

    def _check_room(self, seq_id, need: int) -> None:
        """Raise OutOfPagesError, changing nothing, unless ``need`` pages can be found."""
        if need > self.allocator.num_free and need > self.num_available_pages(seq_id):
            raise OutOfPagesError(f"sequence {seq_id!r} needs {need} more pages; "
                                  f"{self.allocator.num_free} free, {self._num_reclaimable()} evictable")

    def _take_pages(self, n: int) -> list[int]:
        """``n`` fresh pages, evicting cached ones if needed (room checked by the caller)."""
        if n > self.allocator.num_free:
            self._reclaim(n - self.allocator.num_free)
        return self.allocator.allocate(n)

    def try_allocate(self, seq_id, num_tokens: int) -> bool:
        seq = self._seqs.get(seq_id)
        if self._running(seq, num_tokens):                                      # every decode
            return self._grow_started(seq_id, seq, num_tokens)
        return super().try_allocate(seq_id, num_tokens)

    @staticmethod
    def _running(seq: SeqState | None, num_tokens: int) -> bool:
        """Whether ``seq`` is started, resident and asked to grow (not shrink)."""
        return seq is not None and seq.started and not seq.host_pages and num_tokens >= seq.num_tokens

    def _grow_started(self, seq_id, seq: SeqState, num_tokens: int) -> bool:
        """Grow a running, resident ``seq`` to ``num_tokens`` if the pages it needs can be
        found; whether it did (``can_allocate``'s and ``allocate``'s work, done once)."""
        have = self._num_pages(seq)
        need = max(0, -(-num_tokens // self.page_size) - have)
        full = seq.num_tokens // self.page_size
        if need and need > min(self.num_available_pages(seq_id), self.writes.num_free(seq_id, full)):
            return False
        self.writes.seal(seq_id, full, self.block_table, seq.row)
        self._extend(seq_id, seq, num_tokens, have, need, loaded=0)
        return True

    def allocate(self, seq_id, num_tokens: int) -> None:
        seq = self._seqs.get(seq_id)
        if self._running(seq, num_tokens) and self._grow_started(seq_id, seq, num_tokens):
            return                  # else the checks below say what is missing
        have, full = 0, 0
        if seq is not None:
            if num_tokens < seq.num_tokens:
                raise ValueError(f"sequence {seq_id!r} holds {seq.num_tokens} tokens; allocate only "
                                 f"grows (asked for {num_tokens})")
            if seq.host_pages:
                raise ValueError(f"sequence {seq_id!r} is swapped out; swap it in first")
            have, full = self._num_pages(seq), seq.num_tokens // self.page_size
        need = max(0, -(-num_tokens // self.page_size) - have)
        loaded = self._loaded(seq, need)
        if need:                    # both checks raise before anything changes
            self._check_room(seq_id, need)
            self.writes.check_room(seq_id, need - loaded, full)
        if seq is not None:         # pages filled by the steps planned so far can be sealed now
            self.writes.seal(seq_id, full, self.block_table, seq.row)
        if seq is None:
            seq = self._new_seq(seq_id)
        if not seq.started:
            self._start(seq)
        self._extend(seq_id, seq, num_tokens, have, need, loaded)

    def _extend(self, seq_id, seq: SeqState, num_tokens: int, have: int, need: int, loaded: int) -> None:
        """``seq`` (holding ``have`` pages) takes ``need`` fresh pages - the first ``loaded`` for
        its tier hits, the rest placed by the write policy - and holds ``num_tokens`` tokens
        (the room checked by the caller)."""
        if need:
            fresh = self._take_pages(need)
            pages = fresh[:loaded] + self.writes.place(seq_id, have + loaded, fresh[loaded:])
            self.block_table.append(seq.row, pages)
            self._placed(seq, have, pages)
        seq.num_tokens = num_tokens
        self._update_ledger(seq_id, seq, have + need)

    def _start(self, seq: SeqState) -> None:
        """The sequence really runs: its reuse and its admission count now, once."""
        seq.started = True
        self.clock += 1
        self._start_reuse(seq)
        if seq.readmission:
            self._readmitted_prompt_tokens += seq.query_tokens
            self._readmitted_hit_tokens += seq.hit_tokens
        else:
            self._prompt_tokens += seq.query_tokens
            self._hit_tokens += seq.hit_tokens

    def _update_ledger(self, seq_id, seq: SeqState, num_pages: int) -> None:
        # The memory ledger charges each page to the sequence that computed it.
        shared = seq.shared_pages * self.page_size
        self.ledger.update(seq_id, allocated=num_pages * self.page_size - shared,
                           stored=seq.num_tokens - shared)

    def free(self, seq_id) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        if not seq.started:                 # a rolled-back admission: as if it never happened
            self._rollback_reuse(seq)
            self.allocator.decref(reversed(self._row(seq).tolist()))
        else:
            self.clock += 1
            self._before_release(seq_id, seq)
            self.writes.release(seq_id, self.block_table, seq.row)    # staged pages: unsealed
            if seq.host_pages:              # aborted while swapped out: its host pages go back
                self.host_tier.release(seq.host_pages)
            else:
                pages = self._row(seq).tolist()
                freed = set(self.allocator.decref(reversed(pages)))
                self._after_release([p for p in pages if p not in freed])
        self.block_table.remove(seq_id)
        self.ledger.end(seq_id)

    def reset_prefix_cache(self) -> bool:
        if self._seqs:
            return False
        self._drop_cached()
        return True

    def num_tokens(self, seq_id) -> int:
        """Tokens ``seq_id`` holds slots for (0 if unknown)."""
        seq = self._seqs.get(seq_id)
        return seq.num_tokens if seq is not None else 0

    def tick(self, dt: float = 1.0) -> None:
        self.ledger.set_cached(self._num_cached_pages() * self.page_size)
        self.ledger.tick(dt)

    def _tokens_stored(self) -> int:
        """Tokens on the device for live sequences, each shared page counted once."""
        full, partial, array = set(), 0, self.block_table.array
        for seq in self._seqs.values():
            if seq.host_pages:
                continue
            n_full = seq.num_tokens // self.page_size
            full.update(array[seq.row, :n_full].tolist())
            partial += seq.num_tokens - n_full * self.page_size
        return len(full) * self.page_size + partial

    def stats(self, *, detailed: bool = True) -> KVCacheStats:
        a = self.allocator
        host = self.host_tier
        cached = self._num_cached_pages()
        return KVCacheStats(pages_total=a.num_pages, pages_used=a.num_used - cached,
                            pages_free=a.num_free, pages_cached=cached, page_size=self.page_size,
                            num_seqs=len(self._seqs), tokens_stored=self._tokens_stored() if detailed else 0,
                            prompt_tokens=self._prompt_tokens, prefix_hit_tokens=self._hit_tokens,
                            readmitted_prompt_tokens=self._readmitted_prompt_tokens,
                            readmitted_hit_tokens=self._readmitted_hit_tokens, evictions=self.evictions,
                            host_pages_used=0 if host is None else host.num_used,
                            host_pages_total=0 if host is None else host.num_pages,
                            tiers=None if self._tiered is None else self._tiered.stats(),
                            memory=self.ledger.breakdown() if detailed else MemoryBreakdown())

    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype):
        return self.writes.storage(self.kv_format, num_layers=num_layers, num_pages=self.allocator.num_pages,
                                   page_size=self.page_size, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                   dtype=dtype)
