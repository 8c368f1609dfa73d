"""The KV cache contract shared by every cache type, and its statistics record.

Life of a sequence, as a scheduler drives it (host side only; no device needed):

    hit = cache.admit(seq_id, token_ids, salt=..., priority=...)  # reuse a cached prefix
    if cache.can_allocate(seq_id, n): cache.allocate(seq_id, n)   # grow to n tokens (per step)
    ... the step computes tokens hit..n-1 and writes their KV ...
    cache.commit(seq_id, token_ids, num_computed)                 # their KV is in the cache now
    cache.free(seq_id)                                            # finished, aborted or preempted

``pages(seq_id)`` is the sequence's page-table row: token ``j`` lives in page
``pages[j // page_size]`` at offset ``j % page_size`` (the attention contract's layout).
"""

from __future__ import annotations

import abc
import dataclasses

from kvlab.kvcache.ledger import MemoryBreakdown


@dataclasses.dataclass(frozen=True, kw_only=True)
class KVCacheStats:
    """A snapshot of a cache's occupancy plus counters since it was built.

    pages_used: held by live sequences; pages_cached: holding reusable prefixes that no live
    sequence uses (evictable); pages_used + pages_free + pages_cached == pages_total.
    prompt_tokens / prefix_hit_tokens: tokens of admitted sequences and how many of them were
    served from the cache. memory: time-averaged breakdown of the slots (see ``MemoryLedger``).
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
    evictions: int = 0
    memory: MemoryBreakdown = dataclasses.field(default_factory=MemoryBreakdown)

    @property
    def internal_fragmentation(self) -> float:
        """Allocated-but-empty slots over slots held by live sequences, now (0..1)."""
        slots = self.pages_used * self.page_size
        return 0.0 if slots == 0 else 1.0 - self.tokens_stored / slots

    @property
    def usage(self) -> float:
        return self.pages_used / self.pages_total

    @property
    def hit_rate(self) -> float:
        """Prefix hit tokens over admitted prompt tokens."""
        return 0.0 if self.prompt_tokens == 0 else self.prefix_hit_tokens / self.prompt_tokens


class KVCache(abc.ABC):
    """Host half of a KV cache: which pages hold which sequence's tokens.

    Sequences are named by the caller's ids. The device half is created by ``init_storage`` and
    lives in the engine's step as an explicit pytree.
    """

    page_size: int
    max_step_tokens: int | None = None   # most new tokens a sequence may compute in one step
    host_tier = None                     # a HostTier where preemption by swap moves sequences

    @property
    @abc.abstractmethod
    def capacity_tokens(self) -> int:
        """Tokens the whole cache can hold."""

    def admit(self, seq_id, token_ids, *, salt=None, priority: int = 0) -> int:
        """Start a sequence that will hold ``token_ids`` (its prompt, or prompt + output when it
        is recomputed). Caches with prefix reuse attach the longest cached prefix, leaving at least
        the last token to compute, and return its length; the others return 0. ``salt`` names a
        namespace (tenant, LoRA id): prefixes are shared only within one salt. ``priority`` is
        the retention priority of the blocks this sequence leaves behind."""
        return 0

    @abc.abstractmethod
    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        """Whether ``seq_id`` can grow to hold ``num_tokens`` tokens in total now."""

    @abc.abstractmethod
    def allocate(self, seq_id, num_tokens: int) -> None:
        """Grow (or create) ``seq_id`` to hold ``num_tokens`` tokens in total."""

    @abc.abstractmethod
    def pages_needed(self, seq_id, num_tokens: int) -> int:
        """More pages ``seq_id`` needs to hold ``num_tokens`` tokens (admission control)."""

    @abc.abstractmethod
    def num_available_pages(self) -> int:
        """Pages an allocation could get now: free ones plus evictable cached ones."""

    def commit(self, seq_id, token_ids, num_computed: int) -> None:
        """The KV of ``token_ids[:num_computed]`` is now in the cache (prefix caches index it).
        ``token_ids`` may be any sliceable sequence; only the new part is read."""
        return None

    def match_prefix(self, token_ids, *, salt=None) -> int:
        """How many leading tokens of ``token_ids`` are cached now (no side effects)."""
        return 0

    @abc.abstractmethod
    def free(self, seq_id) -> None:
        """Release ``seq_id``; prefix caches keep reusable blocks until evicted."""

    @abc.abstractmethod
    def pages(self, seq_id) -> list[int]:
        """The page-table row of ``seq_id`` (see the module docstring)."""

    @abc.abstractmethod
    def stats(self, *, detailed: bool = True) -> KVCacheStats:
        """Occupancy snapshot and counters. ``detailed=False`` skips what walks every live
        sequence (``tokens_stored`` and ``memory`` stay at zero): the page counts and counters
        cost next to nothing, so a monitor can ask every step."""

    @abc.abstractmethod
    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype):
        """Create the device arrays (a pytree) for a model of these shapes."""

    # ---- checks and hooks with defaults ---------------------------------------------------------
    def validate_request(self, *, prompt_tokens: int, max_tokens: int) -> None:
        """Raise ValueError if a sequence of ``prompt_tokens`` growing to ``max_tokens`` could
        never be served, even alone."""
        if max_tokens > self.capacity_tokens:
            raise ValueError(f"a request may need {max_tokens} tokens of KV cache (prompt "
                             f"{prompt_tokens} + output) but the cache holds {self.capacity_tokens}; "
                             f"lower max_tokens or enlarge the cache")

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
