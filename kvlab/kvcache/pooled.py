"""PagePoolCache: the host bookkeeping shared by the caches that hand out pages of one pool
(paged, blocked, radix): a page-table row per sequence, growth page by page, eviction hooks for
the prefix caches, counters and the memory ledger.

Reference counting: a sequence holds one reference on each page of its row; a prefix cache holds
one reference on each page it indexes. A page whose only reference is the cache's is *cached*
(reusable, evictable); a page with no reference is free. The memory ledger charges a shared page
to the sequence that computed it; once that one ends, the page's other users are not charged for
it (a small undercount of *stored* while prefixes are shared).
"""

from __future__ import annotations

import dataclasses

from kvlab.kvcache.base import KVCache, KVCacheStats
from kvlab.kvcache.ledger import MemoryBreakdown, MemoryLedger
from kvlab.kvcache.pool import OutOfPagesError, PageAllocator
from kvlab.kvcache.storage import PagedKVStorage


def check_power_of_two(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1 (the attention kernels split "
                         f"positions into page and offset with shifts), got {value!r}")


@dataclasses.dataclass(eq=False)
class SeqState:
    """Host state of one sequence. ``num_tokens``: slots it may use (allocated); ``hit_tokens``:
    the prefix reused at admission; ``started``: it allocated at least once (counted in stats)."""

    pages: list[int] = dataclasses.field(default_factory=list)
    num_tokens: int = 0
    salt: object = None
    priority: int = 0
    query_tokens: int = 0
    hit_tokens: int = 0
    shared_pages: int = 0             # pages it uses but another sequence computed (accounting)
    started: bool = False
    block_hashes: list = dataclasses.field(default_factory=list)   # hash-chained caches
    num_indexed: int = 0              # leading full pages already in the prefix index
    host_pages: dict = dataclasses.field(default_factory=dict)     # row index -> host page (swapped)
    node: object = None               # radix: deepest tree node this sequence locks
    tokens: object = None             # radix: the token sequence, for indexing at free
    num_computed: int = 0


class PagePoolCache(KVCache):
    """Sequences grow page by page from one reference-counted pool of ``num_pages`` pages."""

    def __init__(self, *, num_pages: int, page_size: int, host_tier=None):
        check_power_of_two("page_size", page_size)
        self.page_size = page_size
        self.allocator = PageAllocator(num_pages)
        self.host_tier = host_tier
        self._seqs: dict[object, SeqState] = {}
        self.ledger = MemoryLedger(num_pages * page_size)
        self.clock = 0                    # logical time of last use, for eviction policies
        self._prompt_tokens = 0
        self._hit_tokens = 0
        self.evictions = 0

    @classmethod
    def for_tokens(cls, tokens: int, *, page_size: int = 16, **kwargs):
        """A cache holding at least ``tokens`` tokens."""
        return cls(num_pages=max(1, -(-tokens // page_size)), page_size=page_size, **kwargs)

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_pages * self.page_size

    # ---- hooks for prefix caches ---------------------------------------------------------------
    def _reuse_prefix(self, seq: SeqState, token_ids) -> int:
        """Attach cached pages to ``seq.pages`` (taking references); return the tokens reused."""
        return 0

    def _num_reclaimable(self) -> int:
        """Pages that eviction could free now."""
        return 0

    def _reclaim(self, n: int) -> None:
        """Evict until ``n`` more pages are free (or nothing is evictable)."""

    def _num_cached_pages(self) -> int:
        return 0

    def _before_release(self, seq_id, seq: SeqState) -> None:
        """Called by ``free`` before the sequence's page references are dropped."""

    def _after_release(self, pages: list[int]) -> None:
        """Called by ``free`` with the pages that still have references (cache-held)."""

    # ---- contract --------------------------------------------------------------------------------
    def admit(self, seq_id, token_ids, *, salt=None, priority: int = 0) -> int:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} is already in the cache; free it first")
        seq = SeqState(salt=salt, priority=priority, query_tokens=len(token_ids))
        self.clock += 1
        hit = self._reuse_prefix(seq, token_ids)
        seq.num_tokens = seq.hit_tokens = hit
        seq.shared_pages = hit // self.page_size
        self._seqs[seq_id] = seq
        return hit

    def _pages_needed(self, seq: SeqState | None, num_tokens: int) -> int:
        have = len(seq.pages) if seq is not None else 0
        return max(0, -(-num_tokens // self.page_size) - have)

    def pages_needed(self, seq_id, num_tokens: int) -> int:
        return self._pages_needed(self._seqs.get(seq_id), num_tokens)

    def num_available_pages(self) -> int:
        return self.allocator.num_free + self._num_reclaimable()

    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        seq = self._seqs.get(seq_id)
        if seq is not None and num_tokens <= len(seq.pages) * self.page_size:
            return True                                   # fits its last page (most decodes)
        return self._pages_needed(seq, num_tokens) <= self.num_available_pages()

    def allocate(self, seq_id, num_tokens: int) -> None:
        seq = self._seqs.get(seq_id)
        if seq is not None and num_tokens < seq.num_tokens:
            raise ValueError(f"sequence {seq_id!r} holds {seq.num_tokens} tokens; allocate only "
                             f"grows (asked for {num_tokens})")
        need = self._pages_needed(seq, num_tokens)
        if need:
            if need > self.allocator.num_free:
                self._reclaim(need - self.allocator.num_free)
            if need > self.allocator.num_free:
                raise OutOfPagesError(f"sequence {seq_id!r} needs {need} more pages for {num_tokens} "
                                      f"tokens, {self.allocator.num_free} free")
        if seq is None:
            seq = self._seqs[seq_id] = SeqState()
        if need:
            seq.pages.extend(self.allocator.allocate(need))
        seq.num_tokens = num_tokens
        if not seq.started:               # count the admission once it really runs
            seq.started = True
            self._prompt_tokens += seq.query_tokens
            self._hit_tokens += seq.hit_tokens
        # The memory ledger charges each page to the sequence that computed it.
        shared = seq.shared_pages * self.page_size
        self.ledger.update(seq_id, allocated=len(seq.pages) * self.page_size - shared,
                           stored=num_tokens - shared)

    def free(self, seq_id) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        self.clock += 1
        self._before_release(seq_id, seq)
        freed = set(self.allocator.decref(reversed([p for p in seq.pages if p >= 0])))
        self._after_release([p for p in seq.pages if p >= 0 and p not in freed])
        if seq.host_pages:                # aborted while swapped out: its host pages go back too
            self.host_tier.allocator.decref(list(seq.host_pages.values()))
        self.ledger.end(seq_id)

    def pages(self, seq_id) -> list[int]:
        seq = self._seqs.get(seq_id)
        return seq.pages if seq is not None else []

    # ---- swapping to a host tier (preemption by swap) --------------------------------------------
    def _before_swap_out(self, seq: SeqState) -> None:
        """Prefix caches index what the sequence computed and let go of their hold on it: the
        sequence comes back with private copies of all its pages."""
        seq.num_indexed = 0

    def can_swap_out(self, seq_id) -> bool:
        seq = self._seqs.get(seq_id)
        return (self.host_tier is not None and seq is not None and not seq.host_pages
                and len(seq.pages) <= self.host_tier.allocator.num_free)

    def swap_out(self, seq_id) -> list[tuple[int, int]]:
        """Copy all the sequence's pages to the host tier and drop its device references (shared
        pages stay with their other holders or in the prefix cache). Returns the (device page,
        host page) copies the engine must make before this step runs."""
        seq = self._seqs[seq_id]
        self.clock += 1
        self._before_swap_out(seq)
        hosts = self.host_tier.allocator.allocate(len(seq.pages))
        copies = list(zip(seq.pages, hosts))
        freed = set(self.allocator.decref(reversed(seq.pages)))
        self._after_release([p for p in seq.pages if p not in freed])
        seq.host_pages = dict(enumerate(hosts))
        seq.pages = [-1] * len(hosts)
        seq.shared_pages = 0
        self.ledger.update(seq_id, allocated=0, stored=0)
        return copies

    def can_swap_in(self, seq_id) -> bool:
        seq = self._seqs.get(seq_id)
        return seq is not None and len(seq.host_pages) <= self.num_available_pages()

    def swap_in(self, seq_id) -> list[tuple[int, int]]:
        """Bring a swapped sequence back; returns the (host page, device page) copies."""
        seq = self._seqs[seq_id]
        n = len(seq.host_pages)
        if n > self.allocator.num_free:
            self._reclaim(n - self.allocator.num_free)
        devices = self.allocator.allocate(n)
        copies = []
        for (i, h), d in zip(sorted(seq.host_pages.items()), devices):
            seq.pages[i] = d
            copies.append((h, d))
        self.host_tier.allocator.decref([h for h, _ in copies])
        seq.host_pages = {}
        shared = seq.shared_pages * self.page_size
        self.ledger.update(seq_id, allocated=len(seq.pages) * self.page_size - shared,
                           stored=seq.num_tokens - shared)
        return copies

    def num_tokens(self, seq_id) -> int:
        seq = self._seqs.get(seq_id)
        return seq.num_tokens if seq is not None else 0

    def tick(self, dt: float = 1.0) -> None:
        self.ledger.set_cached(self._num_cached_pages() * self.page_size)
        self.ledger.tick(dt)

    def _tokens_stored(self) -> int:
        """Tokens held by live sequences, each shared page counted once."""
        full, partial = set(), 0
        for seq in self._seqs.values():
            n_full = seq.num_tokens // self.page_size
            full.update(seq.pages[:n_full])
            partial += seq.num_tokens - n_full * self.page_size
        return len(full) * self.page_size + partial

    def stats(self, *, detailed: bool = True) -> KVCacheStats:
        a = self.allocator
        cached = self._num_cached_pages()
        return KVCacheStats(pages_total=a.num_pages, pages_used=a.num_used - cached,
                            pages_free=a.num_free, pages_cached=cached, page_size=self.page_size,
                            num_seqs=len(self._seqs), tokens_stored=self._tokens_stored() if detailed else 0,
                            prompt_tokens=self._prompt_tokens, prefix_hit_tokens=self._hit_tokens,
                            evictions=self.evictions,
                            memory=self.ledger.breakdown() if detailed else MemoryBreakdown())

    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype) -> PagedKVStorage:
        return PagedKVStorage.zeros(num_layers=num_layers, num_pages=self.allocator.num_pages,
                                    page_size=self.page_size, num_kv_heads=num_kv_heads,
                                    head_dim=head_dim, dtype=dtype)
