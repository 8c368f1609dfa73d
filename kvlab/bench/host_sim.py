"""Run a scheduler and a KV cache with no model and no device: each step's tokens are random, every
request generates exactly its ``max_tokens``. What the cache and scheduler do - admissions, prefix
hits, preemptions, memory - is exactly what they would do in the engine.

Example:
    >>> from kvlab.kvcache import PagedKVCache
    >>> from kvlab.schedulers import ContinuousScheduler
    >>> from kvlab.workloads import sharegpt_like
    >>> r = simulate(ContinuousScheduler(max_num_seqs=64, max_num_batched_tokens=4096),
    ...              PagedKVCache(num_pages=2048, page_size=16), sharegpt_like(100))
    >>> r.finished, r.stats.pages_used
    (100, 0)
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from kvlab.kvcache.base import KVCacheStats
from kvlab.schedulers.request import Request, SamplingParams


@dataclasses.dataclass(frozen=True)
class SimResult:
    steps: int
    finished: int
    preemptions: int
    stats: KVCacheStats
    host_seconds: float          # scheduling + cache bookkeeping, all steps

    @property
    def host_ms_per_step(self) -> float:
        return 1e3 * self.host_seconds / max(1, self.steps)


def simulate(scheduler, cache, requests, *, arrivals_per_step: int | None = None, seed: int = 0,
             vocab_size: int = 32000) -> SimResult:
    """Drive ``scheduler`` over ``cache`` with ``requests`` (``SyntheticRequest``s) until all
    finish. arrivals_per_step: None queues everything at step 0, k queues k requests per step
    in order."""
    rng = np.random.default_rng(seed)
    scheduler.attach(cache)
    pending = [Request(f"r{i}", list(r.prompt_token_ids), SamplingParams(max_tokens=r.max_tokens,
                                                                        ignore_eos=True))
               for i, r in enumerate(requests)]
    pending.reverse()
    steps = finished = 0
    start = time.perf_counter()
    while pending or scheduler.has_unfinished():
        for _ in range(len(pending) if arrivals_per_step is None else arrivals_per_step):
            if pending:
                scheduler.add(pending.pop())
        plan = scheduler.schedule()
        if plan.is_empty and scheduler.has_unfinished() and not pending:
            raise RuntimeError("the scheduler planned nothing although requests wait")
        tokens = rng.integers(3, vocab_size, len(plan.seqs))
        finished += sum(o.finished for o in scheduler.update(plan, tokens))
        steps += 1
    return SimResult(steps, finished, getattr(scheduler, "num_preemptions", 0), cache.stats(),
                     time.perf_counter() - start)
