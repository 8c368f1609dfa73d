"""The KV cache contract shared by every cache type, and its statistics record."""

from __future__ import annotations

import abc
import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class KVCacheStats:
    """A snapshot of a cache's occupancy.

    internal_fragmentation: allocated-but-empty token slots over allocated slots (0..1).
    """

    pages_total: int
    pages_used: int
    pages_free: int
    page_size: int
    num_seqs: int
    tokens_stored: int
    prefix_hit_tokens: int = 0
    evictions: int = 0

    @property
    def internal_fragmentation(self) -> float:
        slots = self.pages_used * self.page_size
        return 0.0 if slots == 0 else 1.0 - self.tokens_stored / slots

    @property
    def usage(self) -> float:
        return self.pages_used / self.pages_total


class KVCache(abc.ABC):
    """Host half of a KV cache: which pages hold which sequence's tokens.

    Sequences are named by the caller's ids. ``allocate(seq_id, n)`` grows a sequence so it can
    hold ``n`` tokens in total; ``free`` releases it. The device half is created by
    ``init_storage`` and lives in the engine's step as an explicit pytree.
    """

    page_size: int

    @property
    @abc.abstractmethod
    def capacity_tokens(self) -> int:
        """Tokens the whole cache can hold."""

    @abc.abstractmethod
    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        """Whether ``seq_id`` can grow to hold ``num_tokens`` tokens in total now."""

    @abc.abstractmethod
    def allocate(self, seq_id, num_tokens: int) -> None:
        """Grow (or create) ``seq_id`` to hold ``num_tokens`` tokens in total."""

    @abc.abstractmethod
    def match_prefix(self, token_ids) -> int:
        """How many leading tokens of ``token_ids`` are already cached."""

    @abc.abstractmethod
    def free(self, seq_id) -> None:
        """Release everything ``seq_id`` holds."""

    @abc.abstractmethod
    def pages(self, seq_id) -> list[int]:
        """The pages of ``seq_id`` in token order."""

    @abc.abstractmethod
    def stats(self) -> KVCacheStats:
        """Occupancy snapshot."""

    @abc.abstractmethod
    def init_storage(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype):
        """Create the device arrays (a pytree) for a model of these shapes."""
