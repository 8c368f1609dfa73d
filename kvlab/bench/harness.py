"""Drive a real engine with a workload on a clock, and record what a serving benchmark reports.

``run_workload(engine, requests)`` sends each ``SyntheticRequest`` when its ``arrival`` (seconds
from the start) comes, steps the engine while anything runs, idles until the next arrival when
nothing does, and returns an ``EngineRun``: one ``RequestRecord`` per finished request (times in
seconds from the start, TTFT counted from the scheduled arrival, so a late send is charged to the
engine), the cache's page counts and hit rate after every ``stats_every`` steps (the cheap
``stats(detailed=False)``, so sampling adds next to nothing to the measured steps), the prefix hit
rate of this run alone (an engine may serve several runs with its cache kept), the memory waste
and the run's totals.
``run_sessions(engine, sessions)`` is the closed loop: a chat turn is sent when the reply to the
previous turn ends, its prompt holding the replies actually generated.

The clock is the engine's (``Engine(clock=...)``); ``sleep`` waits on it. Both default to the real
clock, and a test may pass a simulated one. With ``exclude_compile_time`` (the default) the run's
clock stops while a step compiles a new shape, as if every shape had been compiled ahead (what
serving systems do with CUDA graphs and precompiled kernels); the compilations are still counted in
``EngineRun.compilations`` (what XLA compiled for this run: a shape an earlier engine in the
process compiled is not counted). Requests decode exactly ``max_tokens`` tokens
(``ignore_eos``), as serving benchmarks do with synthetic prompts.

Example (a tiny random model on the CPU):
    >>> import kvlab
    >>> from kvlab.models import LlamaModel, ModelConfig
    >>> from kvlab.workloads import SyntheticRequest
    >>> model = LlamaModel(ModelConfig.tiny(), seed=0)
    >>> engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=32, page_size=8))
    >>> run = run_workload(engine, [SyntheticRequest([5, 6, 7], 4), SyntheticRequest([8, 9], 3)])
    >>> sorted(r.output_tokens for r in run.records), run.summary()["requests"]   # in finishing order
    ([3, 4], 2.0)
"""

from __future__ import annotations

import dataclasses
import time

from kvlab.bench.metrics import SLO, RequestRecord, summarize
from kvlab.schedulers.request import SamplingParams
from kvlab.workloads.synthetic import SyntheticRequest


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheSample:
    """The cache and queues at one moment (seconds from the start)."""

    time: float
    pages_used: int
    pages_cached: int
    pages_total: int
    hit_rate: float
    running: int
    waiting: int

    @property
    def usage(self) -> float:
        return self.pages_used / self.pages_total if self.pages_total else 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineRun:
    records: list[RequestRecord]
    rejected: list[tuple[str, str]]          # (request id, why) for requests the engine refused
    timeline: list[CacheSample]
    hit_rate: float                          # prefix hit tokens / admitted prompt tokens, this run only
    kv_waste: float                          # time-averaged over the cache's life (``MemoryBreakdown.waste``)
    wall_s: float
    steps: int
    compilations: int

    def summary(self, slo: SLO | None = None) -> dict[str, float]:
        """``kvlab.bench.metrics.summarize`` plus steps, rejections and the cache's final state."""
        out = summarize(self.records, wall_s=self.wall_s, slo=slo, failed=len(self.rejected))
        out.update(steps=float(self.steps), rejected=float(len(self.rejected)),
                   compilations=float(self.compilations),
                   hit_rate=self.hit_rate, kv_waste=self.kv_waste,
                   kv_usage_peak=max((s.usage for s in self.timeline), default=0.0))
        return out


def _sample(engine, now: float) -> CacheSample:
    s = engine.cache.stats(detailed=False)
    sched = engine.scheduler
    return CacheSample(time=now, pages_used=s.pages_used, pages_cached=s.pages_cached,
                       pages_total=s.pages_total, hit_rate=s.hit_rate,
                       running=sched.num_running, waiting=sched.num_waiting)


def _drive(engine, feeder, *, sleep, stats_every: int, progress, exclude_compile_time: bool) -> EngineRun:
    """The loop both entry points (and the simulator) share. ``feeder.due(now)`` yields
    (request id, spec, callback) triples to send;
    ``feeder.next_arrival()`` is the next scheduled send (None: nothing more will come unless a
    running request finishes)."""
    if stats_every < 1:
        raise ValueError(f"stats_every must be >= 1, got {stats_every}")
    base, executor = engine.clock, engine.executor
    if exclude_compile_time:
        engine.clock = lambda: base() - executor.compile_seconds    # the engine stamps tokens with it
    try:
        return _drive_on(engine, feeder, sleep=sleep, stats_every=stats_every, progress=progress)
    finally:
        engine.clock = base


def _drive_on(engine, feeder, *, sleep, stats_every: int, progress) -> EngineRun:
    clock = engine.clock
    start = clock()
    records, rejected, timeline, live = [], [], [], {}
    steps, compiled_before = 0, engine.executor.xla_compilations
    before = engine.cache.stats(detailed=False)
    while True:
        now = clock() - start
        for rid, spec, on_done in feeder.due(now):
            params = SamplingParams(max_tokens=spec.max_tokens, ignore_eos=True)
            try:
                rid = engine.add_request(spec.prompt_token_ids, params, rid,
                                         arrival_time=start + spec.arrival, keep_completion=True)
            except ValueError as e:
                rejected.append((rid, str(e)))
                continue
            live[rid] = (spec, on_done)
        if not engine.has_unfinished():
            nxt = feeder.next_arrival()
            if nxt is None:
                break
            sleep(max(0.0, start + nxt - clock()))
            continue
        events = engine.step()
        steps += 1
        for ev in events:
            if not ev.finished:
                continue
            done = engine.pop_completion(ev.request_id)
            spec, on_done = live.pop(ev.request_id)
            req = done.request
            records.append(RequestRecord(
                request_id=req.request_id, arrival=req.arrival_time - start,
                token_times=tuple(t - start for t in req.token_times),
                prompt_tokens=len(req.prompt_token_ids),
                preemptions=req.num_preemptions, finish_reason=req.finish_reason, tag=spec.tag))
            if on_done is not None:
                on_done(clock() - start, list(done.token_ids))
            if progress is not None:
                progress(len(records))
        if steps % stats_every == 0:
            timeline.append(_sample(engine, clock() - start))
    wall = clock() - start
    timeline.append(_sample(engine, wall))
    after = engine.cache.stats()
    admitted = after.prompt_tokens - before.prompt_tokens
    hit_rate = (after.prefix_hit_tokens - before.prefix_hit_tokens) / admitted if admitted else 0.0
    return EngineRun(records=records, rejected=rejected, timeline=timeline, hit_rate=hit_rate,
                     kv_waste=after.memory.waste, wall_s=wall, steps=steps,
                     compilations=engine.executor.xla_compilations - compiled_before)


class _OpenLoop:
    """Request i of the workload is sent as ``r{i}`` at its arrival (ties in workload order)."""

    def __init__(self, requests):
        self.pending = sorted(enumerate(requests), key=lambda x: (x[1].arrival, x[0]), reverse=True)

    def due(self, now):
        while self.pending and self.pending[-1][1].arrival <= now:
            i, spec = self.pending.pop()
            yield f"r{i}", spec, None

    def next_arrival(self):
        return self.pending[-1][1].arrival if self.pending else None


class _ClosedLoop:
    def __init__(self, sessions, starts):
        self.sessions = sessions
        self.replies = [[] for _ in sessions]
        self.ready = sorted(((t, i) for i, t in enumerate(starts)), reverse=True)     # (send time, session)

    def due(self, now):
        while self.ready and self.ready[-1][0] <= now:
            t, i = self.ready.pop()
            turn = len(self.replies[i])
            spec = self.sessions[i].request(turn, self.replies[i], arrival=t)
            yield f"s{i}-t{turn}", spec, self._done_cb(i)

    def _done_cb(self, i):
        def on_done(t, tokens):
            self.replies[i].append(tokens)
            if len(self.replies[i]) < self.sessions[i].num_turns:
                self.ready.append((t, i))
                self.ready.sort(reverse=True)
        return on_done

    def next_arrival(self):
        return self.ready[-1][0] if self.ready else None


def run_workload(engine, requests: list[SyntheticRequest], *, sleep=time.sleep, stats_every: int = 1,
                 progress=None, exclude_compile_time: bool = True) -> EngineRun:
    """Open loop: request ``i`` is sent as ``r{i}`` at its ``arrival`` (seconds from the start).
    progress: optional ``progress(num_finished)`` called as requests finish."""
    return _drive(engine, _OpenLoop(requests), sleep=sleep, stats_every=stats_every, progress=progress,
                  exclude_compile_time=exclude_compile_time)


def run_sessions(engine, sessions, *, starts: list[float] | None = None, sleep=time.sleep,
                 stats_every: int = 1, progress=None, exclude_compile_time: bool = True) -> EngineRun:
    """Closed loop over ``ChatSession`` s: session i sends turn 0 at ``starts[i]`` (default 0) and
    each later turn when the previous reply ends. Records are tagged ``turn0``, ``turn1``, ..."""
    starts = [0.0] * len(sessions) if starts is None else list(starts)
    if len(starts) != len(sessions):
        raise ValueError(f"{len(sessions)} sessions but {len(starts)} start times")
    return _drive(engine, _ClosedLoop(sessions, starts), sleep=sleep, stats_every=stats_every,
                  progress=progress, exclude_compile_time=exclude_compile_time)
