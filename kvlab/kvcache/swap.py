"""SwappablePoolCache: preemption by swap for the pool caches (vLLM's swap space, TensorRT-LLM's
host offload tier). A running sequence's pages are copied to a ``HostTier`` and released on the
device; it keeps its ``block_table`` row (entries -1 while it is away) and comes back onto fresh
device pages, its row rewritten. The engine makes the page copies the methods return.

Examples:
    >>> from kvlab.kvcache import HostTier, PagedKVCache
    >>> cache = PagedKVCache(num_pages=4, page_size=4, host_tier=HostTier(num_pages=8))
    >>> cache.admit("a", [1] * 6); cache.allocate("a", 6)
    0
    >>> cache.swap_out("a"), cache.pages("a"), cache.stats().pages_free
    ([(0, 0), (1, 1)], [-1, -1], 4)
    >>> cache.allocate("b", 4); cache.swap_in("a"), cache.pages("a")
    ([(0, 3), (1, 1)], [3, 1])
"""

from __future__ import annotations

from kvlab.kvcache.pooled import PagePoolCache
from kvlab.kvcache.seq_state import SeqState


class SwappablePoolCache(PagePoolCache):
    """A ``PagePoolCache`` whose running sequences can move to and from ``host_tier``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._swapped_in: set[int] = set()    # device pages the swap-ins of the plan being made write

    def _bind_swap_space(self) -> None:
        """Give the host tier the cache's tier link (``TierReuse`` or None), once both exist."""
        if self.host_tier is not None:
            self.host_tier.bind(self._tiered)

    def drain_tier_moves(self) -> list:
        self._swapped_in = set()              # the plan is made: its loads are behind it
        return super().drain_tier_moves()

    def _loading(self, pages) -> bool:
        """Whether any of ``pages`` is written by a load of the plan being made (a swap-in or a
        tier hit): its content arrives with the plan's copies, after the pages going out are read."""
        loaded = self._swapped_in | (set() if self._tiered is None else self._tiered.loaded_pages)
        return not loaded.isdisjoint(pages)

    def _before_swap_out(self, seq_id, seq: SeqState, keep_pages: int) -> None:
        """Prefix caches index what the sequence computed (of its first ``keep_pages`` pages,
        which hold their final bytes now) and let go of their hold on it: the sequence comes back
        with private copies of all its pages."""
        seq.num_indexed = 0

    def can_swap_out(self, seq_id) -> bool:
        seq = self._seqs.get(seq_id)
        if self.host_tier is None or seq is None or not seq.started or seq.host_pages:
            return False
        kept = self.writes.swap_keeps(seq.num_tokens)         # KIVI: its full pages only
        return (kept > 0 and self.host_tier.can_hold(-(-kept // self.page_size))
                and not self._loading(self._row(seq).tolist()))

    def swap_keeps(self, seq_id, num_computed: int) -> int:
        return self.writes.swap_keeps(num_computed)

    def swap_out(self, seq_id, *, keep_tokens: int | None = None) -> list[tuple[int, int]]:
        """Copy the sequence's pages (those of its first ``keep_tokens`` tokens; None: all that
        ``swap_keeps`` allows, every page for a format that writes in place) to the
        host tier and drop its device references (shared pages stay with their other holders or
        in the prefix cache). Returns the (device page, host page) copies the engine must make
        before this step runs."""
        if self.host_tier is None:
            raise self._no_host_tier()
        seq = self._seqs[seq_id]
        if not seq.started or seq.host_pages:
            raise ValueError(f"sequence {seq_id!r} is not running on the device; nothing to swap out")
        if self._loading(self._row(seq).tolist()):
            raise ValueError(f"sequence {seq_id!r} has pages that this plan loads (swapped in or loaded "
                             f"from a tier), whose copies come after the pages going out are read; "
                             f"swap it out in a later plan")
        most = self.writes.swap_keeps(seq.num_tokens)
        keep_tokens = most if keep_tokens is None else keep_tokens
        if not 0 < keep_tokens <= most or self.writes.swap_keeps(keep_tokens) != keep_tokens:
            raise ValueError(f"sequence {seq_id!r} holds {seq.num_tokens} tokens; a swap-out cannot keep "
                             f"{keep_tokens} (swap_keeps gives the tokens it can keep: at most {most}; "
                             f"where it keeps none, free the sequence and compute it again)")
        keep = -(-keep_tokens // self.page_size)
        self.clock += 1
        self.writes.before_swap_out(seq_id, keep, self.block_table, seq.row)
        self._before_swap_out(seq_id, seq, keep)
        pages = self._row(seq).tolist()
        hosts, copies = self.host_tier.store(pages[:keep])
        freed = set(self.allocator.decref(reversed(pages)))
        self._after_release([p for p in pages if p not in freed])
        seq.host_pages = hosts
        self.block_table.write(seq.row, 0, [-1] * len(pages))
        self.block_table.truncate(seq.row, keep)
        seq.num_tokens = keep_tokens
        seq.shared_pages = 0
        self.ledger.update(seq_id, allocated=0, stored=0)
        return copies

    def can_swap_in(self, seq_id, num_tokens: int = 0) -> bool:
        seq = self._seqs.get(seq_id)
        if self.host_tier is None or seq is None or not seq.host_pages:
            return False
        need = len(seq.host_pages) + self._pages_needed(seq, num_tokens)    # back, then the growth
        return need <= self.num_available_pages(seq_id)

    def swap_in(self, seq_id) -> list[tuple[int, int]]:
        """Bring a swapped sequence back; returns the (host page, device page) copies. Raises
        ``OutOfPagesError`` - having changed nothing - when the pages cannot be found."""
        if self.host_tier is None:
            raise self._no_host_tier()
        seq = self._seqs[seq_id]
        hosts = seq.host_pages
        self._check_room(seq_id, len(hosts))
        devices = self._take_pages(len(hosts))
        self.block_table.write(seq.row, 0, devices)
        copies = self.host_tier.restore(hosts, devices)
        self._swapped_in.update(devices)
        seq.host_pages = []
        self._update_ledger(seq_id, seq, len(devices))
        return copies
