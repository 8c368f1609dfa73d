"""Preemption strategies: what happens to a running request whose memory is taken back.

* ``RecomputePreemption`` (vLLM's default): its pages are freed; it waits again with the tokens it
  generated and is prefilled anew (a prefix cache often still holds them).
* ``SwapPreemption`` (vLLM v0 swap space, TensorRT-LLM host offload): its private pages are copied
  to the cache's host tier and freed on the device; it resumes where it stopped once pages are
  free again, before any new request is admitted. Needs a cache built with a ``HostTier``; when
  the host tier is full, the victim is recomputed instead.

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


@dataclasses.dataclass(frozen=True)
class RecomputePreemption:
    swaps: bool = dataclasses.field(default=False, init=False)


@dataclasses.dataclass(frozen=True)
class SwapPreemption:
    swaps: bool = dataclasses.field(default=True, init=False)
