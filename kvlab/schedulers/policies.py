"""Ordering policies: small strategy objects that order a scheduler's waiting queue and pick the
running request to preempt.

``order(waiting, cache, step) -> list`` returns the waiting requests in admission order;
``victim(running) -> Request`` names the running request to preempt when memory runs out.
Priorities: a larger ``Request.priority`` is more important (it is admitted first and preempted
last), the same direction as the cache's retention priority.

Examples:
    >>> from kvlab.schedulers.request import Request, SamplingParams
    >>> reqs = [Request(f"r{i}", [1] * n, SamplingParams(), arrival_time=i, priority=p)
    ...         for i, (n, p) in enumerate([(5, 0), (2, 1), (9, 1)])]
    >>> [r.request_id for r in ShortestPromptFirst().order(reqs, None, 0)]
    ['r1', 'r0', 'r2']
    >>> [r.request_id for r in Priority().order(reqs, None, 0)], Priority().victim(reqs).request_id
    (['r1', 'r2', 'r0'], 'r0')
"""

from __future__ import annotations

import dataclasses

from kvlab.schedulers.request import Request


def _arrival(r: Request):
    return r.arrival_time


@dataclasses.dataclass(frozen=True)
class FCFS:
    """First come, first served: by arrival time (a preempted request keeps its place); the
    newest running request is preempted first."""

    def order(self, waiting: list[Request], cache=None, step: int = 0) -> list[Request]:
        return sorted(waiting, key=_arrival)

    def victim(self, running: list[Request]) -> Request:
        return max(running, key=_arrival)


@dataclasses.dataclass(frozen=True)
class Priority(FCFS):
    """Highest ``priority`` first, FCFS within a level; the lowest priority (newest within it) is
    preempted first (vLLM's priority scheduling, TensorRT-LLM's request priorities). Larger is
    more important, as the caches' retention priorities count; vLLM numbers the other way
    (lower first): negate a vLLM priority."""

    def order(self, waiting, cache=None, step: int = 0):
        return sorted(waiting, key=lambda r: (-r.priority, r.arrival_time))

    def victim(self, running):
        return min(running, key=lambda r: (r.priority, -r.arrival_time))


@dataclasses.dataclass(frozen=True)
class ShortestPromptFirst(FCFS):
    """Fewest tokens to compute first (shortest-job-first on the prefill), FCFS on ties."""

    def order(self, waiting, cache=None, step: int = 0):
        return sorted(waiting, key=lambda r: (r.num_tokens - r.num_computed_tokens, r.arrival_time))


@dataclasses.dataclass(frozen=True)
class LongestPrefixMatch(FCFS):
    """SGLang's cache-aware order: the request with the most tokens already in the cache first,
    so shared prefixes are used while they are cached. Past ``max_queue`` waiting requests the
    lookups cost more than they save and the order falls back to FCFS (SGLang uses 128)."""

    max_queue: int = 128

    def order(self, waiting, cache=None, step: int = 0):
        if cache is None or len(waiting) > self.max_queue:
            return super().order(waiting)
        hits = {id(r): cache.match_prefix(r.tokens, salt=r.cache_salt) for r in waiting}
        return sorted(waiting, key=lambda r: (-hits[id(r)], r.arrival_time))


@dataclasses.dataclass(frozen=True)
class StarvationGuard:
    """Wraps a policy so no request waits more than ``max_wait_steps`` steps: requests waiting
    that long go first (oldest first), the rest in the inner policy's order. Preemption victims
    are the inner policy's, never a request the guard promoted this step."""

    inner: object = dataclasses.field(default_factory=FCFS)
    max_wait_steps: int = 64

    def __post_init__(self):
        if self.max_wait_steps < 1:
            raise ValueError(f"max_wait_steps must be >= 1, got {self.max_wait_steps}")

    def order(self, waiting, cache=None, step: int = 0):
        overdue = sorted((r for r in waiting if step - r.queued_step >= self.max_wait_steps), key=_arrival)
        late = {id(r) for r in overdue}
        return overdue + [r for r in self.inner.order(waiting, cache, step) if id(r) not in late]

    def victim(self, running):
        return self.inner.victim(running)
