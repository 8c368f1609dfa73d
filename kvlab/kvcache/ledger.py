"""Time-averaged accounting of KV memory, in the PagedAttention paper's categories.

Every token slot of a cache is, at each moment, one of:
  * stored: holds the KV of a live sequence's token;
  * reserved: held by a sequence, empty now, filled before the sequence ends;
  * internal: held by a sequence and never filled (over-provisioning, last-page slack);
  * external: free but unusable by the allocator's granularity (e.g. a pool remainder smaller
    than a static region);
  * cached: holds tokens of finished sequences kept for prefix reuse (evictable);
  * free.
Reserved and internal are told apart in hindsight: when a sequence ends, its final length says
which of its empty slots were ever filled. The clock is logical: ``tick(dt)`` advances it (the
schedulers tick once per step), and each state is weighted by how long it lasted.

Examples:
    >>> led = MemoryLedger(total_slots=64)
    >>> led.update("a", allocated=32, stored=10); led.tick()
    >>> led.update("a", allocated=32, stored=20); led.tick()
    >>> led.end("a")
    >>> b = led.breakdown()
    >>> (b.stored, b.reserved, b.internal)   # 15 stored, 5 to be filled, 12 never, per 64
    (0.234375, 0.078125, 0.1875)
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryBreakdown:
    """Time-averaged fractions of the cache's slots (they sum to 1)."""

    stored: float = 0.0
    reserved: float = 0.0
    internal: float = 0.0
    external: float = 0.0
    cached: float = 0.0
    free: float = 1.0

    @property
    def waste(self) -> float:
        """Share of the memory held for sequences that holds no token: (reserved + internal +
        external) / (stored + reserved + internal + external). The paper's waste figure."""
        held = self.stored + self.reserved + self.internal + self.external
        return 0.0 if held == 0 else (held - self.stored) / held


class _SeqRecord:
    __slots__ = ("allocated", "alloc_since", "runs", "stored", "stored_since", "stored_integral", "peak")

    def __init__(self, now: float):
        self.allocated = self.stored = self.peak = 0
        self.alloc_since = self.stored_since = now
        self.runs: list[tuple[int, float]] = []   # (allocated slots, duration) of closed runs
        self.stored_integral = 0.0

    def held_runs(self, now: float) -> list[tuple[int, float]]:
        return self.runs + [(self.allocated, now - self.alloc_since)]

    def stored_total(self, now: float) -> float:
        return self.stored_integral + self.stored * (now - self.stored_since)


class MemoryLedger:
    """Integrates each slot category over logical time; see the module docstring."""

    def __init__(self, total_slots: int, external_slots: int = 0):
        self.total_slots = total_slots
        self.external_slots = external_slots
        self.now = 0.0
        self._seqs: dict[object, _SeqRecord] = {}
        self._cached = 0
        self._cached_since = 0.0
        self._cached_integral = 0.0
        self._stored_integral = 0.0      # of ended sequences
        self._reserved_integral = 0.0
        self._internal_integral = 0.0

    def tick(self, dt: float = 1.0) -> None:
        self.now += dt

    def update(self, seq_id, *, allocated: int, stored: int) -> None:
        """``seq_id`` now holds ``allocated`` slots of which ``stored`` hold tokens."""
        now, r = self.now, self._seqs.get(seq_id)
        if r is None:
            r = self._seqs[seq_id] = _SeqRecord(now)
        r.stored_integral += r.stored * (now - r.stored_since)
        r.stored_since = now
        if allocated != r.allocated:      # a run per allocation change, not per step
            if now > r.alloc_since:
                r.runs.append((r.allocated, now - r.alloc_since))
            r.allocated, r.alloc_since = allocated, now
        r.stored = stored
        if stored > r.peak:
            r.peak = stored

    def end(self, seq_id) -> None:
        """``seq_id`` released its slots; its peak length resolves reserved vs internal."""
        r = self._seqs.pop(seq_id, None)
        if r is None:
            return
        runs = r.held_runs(self.now)
        stored = r.stored_total(self.now)
        fillable = sum(min(a, r.peak) * d for a, d in runs)
        self._stored_integral += stored
        self._reserved_integral += fillable - stored
        self._internal_integral += sum(a * d for a, d in runs) - fillable

    def set_cached(self, slots: int) -> None:
        """Slots now holding evictable cached tokens."""
        self._cached_integral += self._cached * (self.now - self._cached_since)
        self._cached, self._cached_since = slots, self.now

    def breakdown(self) -> MemoryBreakdown:
        """Fractions averaged over the clock so far. Live sequences count their empty slots as
        reserved (their final length is not known yet)."""
        elapsed = self.now
        if elapsed <= 0:
            return MemoryBreakdown()
        stored, reserved, internal = self._stored_integral, self._reserved_integral, self._internal_integral
        for r in self._seqs.values():
            s = r.stored_total(self.now)
            stored += s
            reserved += sum(a * d for a, d in r.held_runs(self.now)) - s
        cached = self._cached_integral + self._cached * (self.now - self._cached_since)
        denom = self.total_slots * elapsed
        parts = dict(stored=stored / denom, reserved=reserved / denom, internal=internal / denom,
                     external=self.external_slots / self.total_slots, cached=cached / denom)
        return MemoryBreakdown(**parts, free=max(0.0, 1.0 - sum(parts.values())))
