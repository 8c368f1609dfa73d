"""Run a scheduler and a KV cache with no model and no device: the engine's own loop, with a
``SimulatedExecutor`` in place of the model. Each step's tokens are random and every request
generates exactly its ``max_tokens``; what the cache and scheduler do - admissions, prefix hits,
preemptions, memory - is exactly what they do in a real engine, plan for plan.

Time is either the step count, or - given a ``step_cost`` - a simulated clock: each step lasts what
the cost model says for its plan (padded by the scheduler's own padding policy, as the model
runner pads it), requests arrive at their ``arrival`` times, and the requests' token timestamps
give TTFT and inter-token latency as a real run would.

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

from kvlab.engine.executor import Ready
from kvlab.engine.metrics import summarize
from kvlab.engine.sampling import Sampled
from kvlab.kvcache.base import KVCacheStats
from kvlab.kvcache.tiers.moves import num_device_copies
from kvlab.schedulers.shapes import StepShape


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearStepCost:
    """A model of a step's device time: ``fixed_s`` (reading the weights once) plus
    ``per_token_s`` for each computed token (matmul FLOPs) plus ``per_kv_token_s`` for each key a
    sequence attends to (reading its KV) plus ``per_swapped_token_s`` for each token of KV copied
    to or from the host (swaps, and pages offloaded to or loaded from the tiers below the GPU).
    Token counts are padded as the runner pads them (powers of two from 16; the whole budget
    under fixed shapes)."""

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
        """Seconds for ``plan``, its tokens padded by ``scheduler.shapes`` as the runner pads them."""
        n = 0
        if plan.seqs:
            limits = StepShape(tokens=scheduler.max_num_batched_tokens, rows=scheduler.max_num_seqs,
                               pages=1)
            used = StepShape(tokens=plan.num_tokens, rows=plan.num_rows, pages=1)
            n = scheduler.shapes.pad(used, limits).tokens
        kv = sum(s.start + s.num_new_tokens for s in plan.seqs)
        swapped = len(plan.swap_out) + len(plan.swap_in) + num_device_copies(plan.tier_moves)
        if swapped:
            swapped *= scheduler.cache.page_size
        return (self.fixed_s + self.per_token_s * n + self.per_kv_token_s * kv
                + self.per_swapped_token_s * swapped)


class SimClock:
    """A clock that moves only when told: by a step's cost, or by ``sleep`` to the next arrival."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class SimulatedExecutor:
    """Runs plans on a cost model: the clock advances by ``step_cost(plan, ...)`` (or 1.0 a step
    without one) for each of the plan's ``num_steps`` decode steps, and every row gets a random
    token in [3, vocab_size) each step."""

    def __init__(self, clock: SimClock, scheduler, *, step_cost=None, seed: int = 0,
                 vocab_size: int = 32000):
        self.clock, self.step_cost, self.scheduler = clock, step_cost, scheduler
        self.rng = np.random.default_rng(seed)
        self.vocab_size, self.max_model_len, self.eos_token_ids = vocab_size, 2 ** 31 - 1, ()
        self.num_compilations, self.xla_compilations, self.compile_seconds, self.steps = 0, 0, 0.0, 0

    def launch(self, plan) -> Ready:
        """The step is over when this returns (the clock moved by its cost)."""
        cost = 1.0 if self.step_cost is None else self.step_cost(plan, self.scheduler)
        self.clock.sleep(cost * plan.num_steps)
        self.steps += 1
        tokens = self.rng.integers(3, self.vocab_size, plan.num_rows * plan.num_steps)
        return Ready(Sampled(tokens.astype(np.int32)))


@dataclasses.dataclass(frozen=True)
class SimResult:
    steps: int
    finished: int
    preemptions: int
    stats: KVCacheStats
    host_seconds: float          # the whole simulated run: scheduling, cache bookkeeping, loop
    clock: float                 # simulated seconds (or steps, without a cost model)
    requests: list = dataclasses.field(repr=False, default_factory=list)   # RequestRecords, by request id

    @property
    def host_ms_per_step(self) -> float:
        return 1e3 * self.host_seconds / max(1, self.steps)

    def summary(self) -> dict[str, float]:
        """``kvlab.engine.metrics.summarize`` over the simulated clock."""
        return summarize(self.requests, self.clock) if self.clock > 0 else {"requests": 0.0}

    def records(self) -> list:
        """One ``RequestRecord`` per request (for ``summarize`` with an SLO, per-tag reports)."""
        return list(self.requests)


def simulate(scheduler, cache, requests, *, arrivals_per_step: int | None = None, step_cost=None,
             seed: int = 0, vocab_size: int = 32000) -> SimResult:
    """Drive ``scheduler`` over ``cache`` with ``requests`` (``SyntheticRequest``s) until all
    finish, through the engine's loop (``kvlab.bench.harness.run_workload``) with a
    ``SimulatedExecutor``. Without ``step_cost``: the clock counts steps; arrivals_per_step None
    queues everything at step 0, k queues k requests per step. With ``step_cost`` (e.g.
    ``LinearStepCost``): requests arrive at their ``arrival`` times on the simulated clock."""
    from kvlab.bench.harness import run_workload
    from kvlab.engine.engine import Engine

    clock = SimClock()
    executor = SimulatedExecutor(clock, scheduler, step_cost=step_cost, seed=seed,
                                 vocab_size=vocab_size)
    # The serial loop: a simulated step is over when launched, so planning ahead would only
    # stamp its tokens after the next step's cost.
    engine = Engine(cache=cache, scheduler=scheduler, executor=executor, clock=clock, steps_ahead=0)
    k = arrivals_per_step
    timed = [dataclasses.replace(r, arrival=(r.arrival if step_cost is not None
                                             else 0.0 if k is None else float(i // k)))
             for i, r in enumerate(requests)]
    t0 = time.perf_counter()
    run = run_workload(engine, timed, sleep=clock.sleep, exclude_compile_time=False)
    host = time.perf_counter() - t0
    if run.rejected:
        raise ValueError(f"{len(run.rejected)} requests refused, the first: {run.rejected[0][1]}")
    records = sorted(run.records, key=lambda r: int(r.request_id[1:]))     # workload order
    return SimResult(run.steps, len(records), scheduler.num_preemptions, cache.stats(), host, clock(),
                     records)
