"""The KV cache contract shared by every cache type, and its statistics record.

Life of a sequence, as a scheduler drives it (host side only; no device needed):

    hit = cache.admit(seq_id, token_ids, salt=..., priority=..., readmission=...)
    if not cache.try_allocate(seq_id, n):                         # grow to n tokens (per step)
        cache.free(seq_id)                                        # roll the admission back
    ... the step computes tokens hit..n-1 and writes their KV ...
    cache.commit(seq_id, token_ids, num_computed)                 # their KV is in the cache now
    cache.free(seq_id)                                            # finished, aborted or preempted

``admit`` attaches a cached prefix *tentatively*: the sequence *starts* at its first
``allocate``, and only then is the reuse counted (statistics, and the eviction bookkeeping of the
reused blocks: recency, reuse counts, priority). ``free`` before that rolls the admission back
and leaves the cache exactly as it was, so a request that waits may be admitted every step.
``match_prefix`` has no side effects at all. An allocation that cannot succeed raises
``OutOfPagesError`` and changes nothing (no cached block is evicted for it).

``block_table`` is the cache's persistent page table (a ``BlockTable``): one int32 row per live
sequence, updated in place as pages change, recording the cells it writes for an incremental
device copy. ``pages(seq_id)`` is that row's entries in use: token ``j`` lives in page
``pages[j // page_size]`` at offset ``j % page_size`` (the attention contract's layout).

Optional parts with defaults: ``host_tier`` and swapping (``can_swap_out`` / ``swap_out`` /
``can_swap_in`` / ``swap_in``: preemption by swap), ``tiers`` and ``drain_tier_moves`` (prefix blocks
offloaded below the GPU), ``max_step_tokens`` (a cap on the new tokens
of one sequence per step), ``reset_prefix_cache``, ``drain_seals`` (KIVI's staging pages), and
the checks ``validate_request``, ``attention_options``, ``max_table_pages``.
"""

from __future__ import annotations

import abc
import dataclasses
import weakref

from kvlab.kvcache.block_table import BlockTable
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.ledger import MemoryBreakdown


@dataclasses.dataclass(frozen=True, kw_only=True)
class KVCacheStats:
    """A snapshot of a cache's occupancy plus counters since it was built.

    pages_used: held by live sequences; pages_cached: holding reusable prefixes that no live
    sequence uses (evictable); pages_used + pages_free + pages_cached == pages_total.
    prompt_tokens / prefix_hit_tokens: tokens of sequences admitted for the first time and how
    many of them were served from the cache; readmitted_prompt_tokens / readmitted_hit_tokens: the
    same for re-admissions of preempted sequences (``admit(..., readmission=True)``), kept apart
    so that recomputation does not flatter the hit rate. Each admission is counted once, when the
    sequence starts (its first ``allocate``). evictions: cached pages evicted to make room (a
    ``reset_prefix_cache`` is not counted). host_pages_used / host_pages_total: the swap host
    space's (``host_tier``) pages holding swapped-out sequences, and its capacity (0 without one;
    a ``SwapInTiers`` shares its capacity with the first tier's cached prefixes).
    memory: time-averaged breakdown of the slots (see ``MemoryLedger``).
    """

    pages_total: int
    pages_used: int
    pages_free: int
    page_size: int
    num_seqs: int
    tokens_stored: int
    pages_cached: int = 0
    prompt_tokens: int = 0
    prefix_hit_tokens: int = 0
    readmitted_prompt_tokens: int = 0
    readmitted_hit_tokens: int = 0
    evictions: int = 0
    host_pages_used: int = 0
    host_pages_total: int = 0
    tiers: object = None          # TierReuseStats of a cache with tiers below the GPU, else None
    memory: MemoryBreakdown = dataclasses.field(default_factory=MemoryBreakdown)

    @property
    def internal_fragmentation(self) -> float:
        """Allocated-but-empty slots over slots held by live sequences, now (0..1)."""
        slots = self.pages_used * self.page_size
        return 0.0 if slots == 0 else 1.0 - self.tokens_stored / slots

    @property
    def usage(self) -> float:
        """Pages held by live sequences over all pages."""
        return self.pages_used / self.pages_total

    @property
    def hit_rate(self) -> float:
        """Prefix hit tokens over prompt tokens, first admissions only."""
        return 0.0 if self.prompt_tokens == 0 else self.prefix_hit_tokens / self.prompt_tokens


class KVCache(abc.ABC):
    """Host half of a KV cache: which pages hold which sequence's tokens.

    Sequences are named by the caller's ids. The device half is created by ``init_storage`` and
    lives in the engine's step as an explicit pytree.

    Attributes every cache has:
        page_size: tokens per page (a power of two).
        block_table: the ``BlockTable`` - ``array [rows, width]`` int32, ``num_pages [rows]``,
            ``row_of(seq_id)``, ``drain_changes()`` - kept current in place (module docstring).
        max_step_tokens: the most new tokens one sequence may compute in one step, or None for
            no limit (a circular cache's ring only holds so many).
        host_tier: the swap space (``SwapSpace``: a ``HostTier`` of its own pages, or
            ``SwapInTiers`` in the first KV tier) that preemption by swap moves sequences to, or
            None (then ``can_swap_out`` / ``can_swap_in`` are False and ``swap_*`` raise).
        tiers: the ``TierChain`` (host memory, disk) that evicted prefix blocks go down to and are
            loaded back from, or None; its record arrays are bound by the engine
            (``tiers.bind(storage.page_record)``), and ``drain_tier_moves`` gives the copies.
        kv_format: how the pages store K and V (``kvlab.kvcache.formats``; ``Plain()``, the
            model's dtype, unless the cache was built with another).
    """

    page_size: int
    block_table: BlockTable
    max_step_tokens: int | None = None
    host_tier = None
    tiers = None
    kv_format: KVFormat = PLAIN
    _owner = None               # a weak reference to the engine whose storage the pages index

    @property
    @abc.abstractmethod
    def capacity_tokens(self) -> int:
        """Tokens the whole cache can hold."""

    def admit(self, seq_id, token_ids, *, salt=None, priority: int = 0, readmission: bool = False) -> int:
        """Start a sequence that will hold ``token_ids`` (its prompt, or prompt + output when it
        is recomputed). Caches with prefix reuse attach the longest cached prefix, leaving at least
        the last token to compute, and return its length; the others return 0. ``salt`` names a
        namespace (tenant, LoRA id): prefixes are shared only within one salt. ``priority`` is
        the retention priority of the blocks this sequence leaves behind. ``readmission``: a
        preempted sequence comes back (counted apart, see ``KVCacheStats``). The attachment is
        tentative until the first ``allocate``; ``free`` before that undoes it exactly."""
        return 0

    @abc.abstractmethod
    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        """Whether ``seq_id`` can grow to hold ``num_tokens`` tokens in total now."""

    @abc.abstractmethod
    def allocate(self, seq_id, num_tokens: int) -> None:
        """Grow (or create) ``seq_id`` to hold ``num_tokens`` tokens in total. Raises
        ``OutOfPagesError`` - having changed nothing - when the pages cannot be found."""

    def try_allocate(self, seq_id, num_tokens: int) -> bool:
        """``allocate`` if ``can_allocate``; whether it did (a scheduler's per-step call for every
        running sequence: caches make the common case, a decode that fits its last page, one
        lookup)."""
        if not self.can_allocate(seq_id, num_tokens):
            return False
        self.allocate(seq_id, num_tokens)
        return True

    @abc.abstractmethod
    def pages_needed(self, seq_id, num_tokens: int) -> int:
        """More pages ``seq_id`` needs to hold ``num_tokens`` tokens (admission control)."""

    @abc.abstractmethod
    def num_available_pages(self, seq_id=None) -> int:
        """Pages an allocation for ``seq_id`` could get now: free ones plus evictable cached ones
        (and, in a radix cache, the cached pages only ``seq_id``'s own pending admission holds;
        None: an allocation for any other sequence)."""

    def commit(self, seq_id, token_ids, num_computed: int) -> None:
        """The KV of ``token_ids[:num_computed]`` is in the cache, or being written by a step
        already launched (steps run in order), so prefix caches may index it.
        ``token_ids`` may be any sliceable sequence; only the new part is read."""
        return None

    def drain_tier_moves(self) -> list:
        """The page moves between the GPU and the tiers below it to make before the next step, in
        order, taken out of the cache (``kvlab.kvcache.tiers.moves``; none without tiers)."""
        return []

    def drain_seals(self) -> list[tuple[int, int]]:
        """(staging, sealed) page pairs to seal before the next step, taken out of the cache
        (``kvlab.kvcache.staging``; none for caches whose pages are written in place)."""
        return []

    def match_prefix(self, token_ids, *, salt=None) -> int:
        """How many leading tokens of ``token_ids`` are cached now (no side effects: no
        recency, count or structure changes)."""
        return 0

    def match_prefix_by_tier(self, token_ids, *, salt=None) -> tuple[int, ...]:
        """``match_prefix`` split by where the blocks are: the GPU first, then each tier below it
        (``tiers``, fastest first); just the GPU's for a cache without tiers. No side effects."""
        return (self.match_prefix(token_ids, salt=salt),)

    @abc.abstractmethod
    def free(self, seq_id) -> None:
        """Release ``seq_id``; prefix caches keep reusable blocks until evicted. Freeing a
        sequence that never allocated rolls its admission back (see ``admit``)."""

    def pages(self, seq_id) -> list[int]:
        """The page-table row of ``seq_id``: ``block_table``'s entries in use for it ([] if it
        has no row). A copy, O(its pages): a step should read ``block_table`` instead."""
        table = self.block_table
        if seq_id not in table:
            return []
        return table.pages(table.row_of(seq_id)).tolist()

    @abc.abstractmethod
    def stats(self, *, detailed: bool = True) -> KVCacheStats:
        """Occupancy snapshot and counters. ``detailed=False`` skips what walks every live
        sequence (``tokens_stored`` and ``memory`` stay at zero): the page counts and counters
        cost next to nothing, so a monitor can ask every step."""

    @abc.abstractmethod
    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype):
        """Create the device arrays (a pytree) for a model of these shapes."""

    # ---- ownership -------------------------------------------------------------------------------
    def bind(self, owner) -> None:
        """Give this cache to ``owner`` (an engine: its executor keeps the device storage that
        this cache's pages index). A cache serves one owner at a time: binding it to a second
        while the first is alive raises ValueError (the second would start from empty KV
        storage while the cache records the first's prefixes as cached: wrong tokens). Once the
        first owner is gone, its cached prefixes went with its storage and are dropped; a live
        sequence then is an error too."""
        previous = None if self._owner is None else self._owner()
        if previous is owner:
            return
        if previous is not None:
            raise ValueError(f"this {type(self).__name__} already serves another engine, which "
                             f"keeps its KV storage; give each engine its own cache")
        if not self.reset_prefix_cache():
            raise ValueError(f"this {type(self).__name__} still holds live sequences of an engine "
                             f"that is gone; give the new engine a new cache")
        self._owner = weakref.ref(owner)

    # ---- prefix cache control ------------------------------------------------------------------
    def reset_prefix_cache(self) -> bool:
        """Drop every cached (unreferenced, evictable) prefix block and its index entries, so
        nothing cached before is reused after. Refused - returns False and changes nothing -
        while any sequence is live (admitted, running or swapped out: it holds or may hold
        pages), as vLLM refuses; True otherwise. Not counted in ``evictions``. Caches without
        prefix reuse have nothing to drop."""
        return len(self.block_table) == 0

    # ---- swapping to a host tier (preemption by swap) ------------------------------------------
    def can_swap_out(self, seq_id) -> bool:
        """Whether running ``seq_id`` can move to the host tier now (False without one)."""
        return False

    def swap_keeps(self, seq_id, num_computed: int) -> int:
        """How many of running ``seq_id``'s ``num_computed`` tokens a swap-out keeps (the rest are
        computed again on return): all, unless the KV format keeps fewer (KIVI: its full pages)."""
        return num_computed

    def swap_out(self, seq_id, *, keep_tokens: int | None = None) -> list[tuple[int, int]]:
        """Move ``seq_id``'s pages to the host tier and release them on the device; returns the
        ``(device page, host page)`` copies the engine must make before the step runs. The
        sequence keeps its ``block_table`` row, cut to the pages it keeps (their entries are
        meaningless until ``swap_in``). ``keep_tokens``: the tokens it keeps and comes back with,
        ``swap_keeps``'s answer for the tokens computed (None: as many as the format allows of
        those it holds); a value the format cannot keep, or 0, raises ValueError."""
        raise self._no_host_tier()

    def can_swap_in(self, seq_id, num_tokens: int = 0) -> bool:
        """Whether swapped-out ``seq_id`` can come back to the device now and then grow to hold
        ``num_tokens`` tokens (0: come back as it is; False without a tier)."""
        return False

    def swap_in(self, seq_id) -> list[tuple[int, int]]:
        """Bring swapped-out ``seq_id`` back onto fresh device pages (its row is rewritten);
        returns the ``(host page, device page)`` copies the engine must make before the step."""
        raise self._no_host_tier()

    def _no_host_tier(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__} has no host tier, so it cannot swap sequences; "
                            f"give it one (host_tier=HostTier(num_pages=...)) or preempt by recompute")

    # ---- checks and hooks with defaults ---------------------------------------------------------
    def validate_request(self, *, prompt_tokens: int, step_tokens: int, total_tokens: int) -> None:
        """Raise ValueError if a request could never be served, even alone: its prompt has
        ``prompt_tokens`` tokens, one step computes at most ``step_tokens`` of them (the whole
        prompt, or a chunk), and it may grow to ``total_tokens`` (prompt + max_tokens, capped by
        the model's context)."""
        capacity = self.capacity_tokens
        if total_tokens <= capacity:
            return
        if prompt_tokens >= capacity:
            raise ValueError(f"the prompt of {prompt_tokens} tokens alone fills this cache "
                             f"({capacity} tokens); give the cache more pages")
        raise ValueError(f"a request may grow to {total_tokens} tokens (prompt {prompt_tokens} + "
                         f"{total_tokens - prompt_tokens} new) but the cache holds {capacity}; "
                         f"lower max_tokens to at most {capacity - prompt_tokens} or give the "
                         f"cache more pages")

    def attention_options(self, options, max_model_len: int):
        """The attention options this cache serves ``options`` with (a windowed cache imposes
        its window). Raises ValueError if the cache cannot serve the model."""
        return options

    def max_table_pages(self, max_model_len: int) -> int:
        """The longest page-table row a sequence can need."""
        return -(-min(max_model_len, self.capacity_tokens) // self.page_size)

    def tick(self, dt: float = 1.0) -> None:
        """Advance the logical clock of the time-averaged statistics (schedulers: once a step)."""
        return None
