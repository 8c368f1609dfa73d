"""Preemption strategies: what happens to a running request whose memory is taken back.

* ``RecomputePreemption`` (vLLM's default): its pages are freed; it waits again with the tokens it
  generated and is prefilled anew (a prefix cache often still holds them).
* ``SwapPreemption`` (vLLM v0 swap space, TensorRT-LLM host offload): its private pages are copied
  to the cache's host tier and freed on the device; it resumes where it stopped once pages are
  free again, before any new request is admitted (what the cache does not keep, KIVI's unfilled
  last page, is computed again first). Needs a cache built with a ``HostTier``; when the host
  tier is full, or the swap would keep none of its tokens, the victim is recomputed instead.

Examples:
    >>> from kvlab.kvcache import HostTier, PagedKVCache
    >>> from kvlab.schedulers import ContinuousScheduler
    >>> sched = ContinuousScheduler(preemption=SwapPreemption())
    >>> sched.attach(PagedKVCache(num_pages=8, host_tier=HostTier(num_pages=16)))
    >>> ContinuousScheduler(preemption=SwapPreemption()).attach(PagedKVCache(num_pages=8))
    Traceback (most recent call last):
    ...
    ValueError: SwapPreemption needs a cache with a host tier, e.g. ...
"""

from __future__ import annotations

import dataclasses

from kvlab.schedulers.request import RequestStatus


@dataclasses.dataclass(frozen=True)
class Preempted:
    """What a preemption did: the request's new ``status`` (WAITING: recompute; SWAPPED: its KV
    waits in the host tier) and the (device page, host page) copies the step must make first."""

    status: RequestStatus
    swap_out: list[tuple[int, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RecomputePreemption:
    """Free the victim's pages; it waits again and is prefilled anew."""

    def check(self, cache) -> None:
        """Raise ValueError if ``cache`` cannot serve this strategy (every cache can)."""

    def preempt(self, request, cache) -> Preempted:
        cache.free(request.request_id)
        request.num_computed_tokens = 0
        return Preempted(RequestStatus.WAITING)


@dataclasses.dataclass(frozen=True)
class SwapPreemption:
    """Copy the victim's pages to the cache's host tier; recompute when the tier is full."""

    def check(self, cache) -> None:
        if cache.host_tier is None:
            raise ValueError("SwapPreemption needs a cache with a host tier, e.g. "
                             "PagedKVCache(..., host_tier=HostTier(num_pages=...))")

    def preempt(self, request, cache) -> Preempted:
        rid = request.request_id
        keep = cache.swap_keeps(rid, request.num_computed_tokens) if cache.can_swap_out(rid) else 0
        if keep == 0:                           # no room on the host, or nothing a swap would keep
            return RecomputePreemption().preempt(request, cache)
        copies = cache.swap_out(rid, keep_tokens=keep)
        request.num_computed_tokens = keep      # the rest (KIVI: an unfilled page) is computed again
        return Preempted(RequestStatus.SWAPPED, copies)
