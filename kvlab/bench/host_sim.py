"""Run a scheduler and a KV cache with no model and no device: each step's tokens are random, every
request generates exactly its ``max_tokens``. What the cache and scheduler do - admissions, prefix
hits, preemptions, memory - is exactly what they would do in the engine.

Time is either the step count, or - given a ``step_cost`` - a simulated clock: each step lasts what
the cost model says for its plan, requests arrive at their ``arrival`` times, and the requests'
token timestamps give TTFT and inter-token latency as a real run would.

Examples:
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

from kvlab.engine.metrics import summarize
from kvlab.kvcache.base import KVCacheStats
from kvlab.schedulers.request import Request, SamplingParams


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearStepCost:
    """A model of a step's device time: ``fixed_s`` (reading the weights once) plus
    ``per_token_s`` for each computed token (matmul FLOPs) plus ``per_kv_token_s`` for each key a
    sequence attends to (reading its KV) plus ``per_swapped_token_s`` for each token of KV copied
    to or from the host tier. Token counts are padded as the runner pads them (powers of two from
    16; the whole budget under fixed shapes)."""

    fixed_s: float
    per_token_s: float
    per_kv_token_s: float
    per_swapped_token_s: float = 0.0

    @classmethod
    def llama3_8b_h100(cls) -> LinearStepCost:
        """Llama-3-8B in bf16 on an H100 from the measured roofline figures in DESIGN.md:
        16 GB of weights at 2.93 TB/s (5.5 ms), 16 GFLOP a token at ~600 TFLOP/s (27 us),
        128 KiB of KV a context token at 2.93 TB/s (45 ns), and the same 128 KiB over PCIe 5
        at an assumed 25 GB/s for swapping (5.2 us)."""
        kv_bytes = 32 * 8 * 128 * 2 * 2
        return cls(fixed_s=16.06e9 / 2.93e12, per_token_s=2 * 8.03e9 / 600e12,
                   per_kv_token_s=kv_bytes / 2.93e12, per_swapped_token_s=kv_bytes / 25e9)

    def __call__(self, plan, scheduler) -> float:
        n = plan.num_tokens
        if scheduler.fixed_shapes:
            n = scheduler.max_num_batched_tokens
        else:
            n = max(16, 1 << (n - 1).bit_length()) if n else 0
        kv = sum(s.start + s.num_new_tokens for s in plan.seqs)
        swapped = len(plan.swap_out) + len(plan.swap_in)
        if swapped:
            swapped *= scheduler.cache.page_size
        return (self.fixed_s + self.per_token_s * n + self.per_kv_token_s * kv
                + self.per_swapped_token_s * swapped)


@dataclasses.dataclass(frozen=True)
class SimResult:
    steps: int
    finished: int
    preemptions: int
    stats: KVCacheStats
    host_seconds: float          # scheduling + cache bookkeeping, all steps
    clock: float                 # simulated seconds (or steps, without a cost model)
    requests: list = dataclasses.field(repr=False, default_factory=list)

    @property
    def host_ms_per_step(self) -> float:
        return 1e3 * self.host_seconds / max(1, self.steps)

    def summary(self) -> dict[str, float]:
        """TTFT / ITL percentiles and throughput over the simulated clock (see engine metrics)."""
        return summarize(self.requests, self.clock)

    def records(self) -> list:
        """One ``kvlab.bench.metrics.RequestRecord`` per request (for ``metrics.summarize`` with
        an SLO, per-tag reports, TPOT and end-to-end latency)."""
        from kvlab.bench.metrics import RequestRecord

        return [RequestRecord.of(r) for r in self.requests]


def simulate(scheduler, cache, requests, *, arrivals_per_step: int | None = None, step_cost=None,
             seed: int = 0, vocab_size: int = 32000) -> SimResult:
    """Drive ``scheduler`` over ``cache`` with ``requests`` (``SyntheticRequest``s) until all
    finish. Without ``step_cost``: arrivals_per_step None queues everything at step 0, k queues k
    requests per step. With ``step_cost`` (e.g. ``LinearStepCost``): requests arrive at their
    ``arrival`` times on the simulated clock."""
    rng = np.random.default_rng(seed)
    scheduler.attach(cache)
    reqs = [Request(f"r{i}", list(r.prompt_token_ids),
                    SamplingParams(max_tokens=r.max_tokens, ignore_eos=True),
                    arrival_time=r.arrival if step_cost is not None else 0.0)
            for i, r in enumerate(requests)]
    pending = sorted(reqs, key=lambda r: r.arrival_time, reverse=True)
    steps = finished = 0
    clock, host = 0.0, 0.0
    while pending or scheduler.has_unfinished():
        if step_cost is None:
            batch = len(pending) if arrivals_per_step is None else arrivals_per_step
            arrived = [pending.pop() for _ in range(min(batch, len(pending)))]
        else:
            if not scheduler.has_unfinished() and pending[-1].arrival_time > clock:
                clock = pending[-1].arrival_time            # idle until the next arrival
            arrived = []
            while pending and pending[-1].arrival_time <= clock:
                arrived.append(pending.pop())
        t0 = time.perf_counter()
        for r in arrived:
            scheduler.add(r)
        plan = scheduler.schedule()
        t1 = time.perf_counter()
        if plan.is_empty and scheduler.has_unfinished() and not pending:
            raise RuntimeError("the scheduler planned nothing although requests wait")
        clock += step_cost(plan, scheduler) if step_cost is not None else 1.0
        tokens = rng.integers(3, vocab_size, len(plan.seqs))
        t2 = time.perf_counter()
        finished += sum(o.finished for o in scheduler.update(plan, tokens, now=clock))
        host += (t1 - t0) + (time.perf_counter() - t2)
        steps += 1
    return SimResult(steps, finished, scheduler.num_preemptions, cache.stats(), host, clock, reqs)
