"""The engine harness on a simulated clock: a model whose every step lasts exactly 10 ms, so TTFT,
inter-token latencies and end-to-end times come out exactly; open and closed loop; rejections."""

from __future__ import annotations

import pytest

import kvlab
from kvlab.bench import run_sessions, run_workload
from kvlab.models import LlamaModel, ModelConfig
from kvlab.workloads import SyntheticRequest, chat_sessions

STEP = 0.01


class FakeClock:
    def __init__(self):
        self.t = 100.0              # not zero: times must come out relative to the start

    def __call__(self):
        return self.t

    def sleep(self, dt):
        assert dt >= 0
        self.t += dt


@pytest.fixture(scope="module")
def model():
    return LlamaModel(ModelConfig.tiny(), seed=0)


def engine_on(model, clock, **sched):
    sched = dict(dict(max_num_seqs=4, max_num_batched_tokens=64), **sched)
    # The fake step is over when it is launched (as the simulator's), so the serial loop: planning
    # ahead would stamp a step's tokens after the next step's time.
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=32, page_size=8), clock=clock,
                          scheduler=kvlab.ContinuousScheduler(**sched), max_model_len=128, steps_ahead=0)
    run = engine.runner.launch

    def timed_run(*a, **k):          # the "fake model": every step takes STEP seconds on the clock
        clock.t += STEP
        return run(*a, **k)
    engine.runner.launch = timed_run
    return engine


def test_open_loop_latencies_are_exact(model):
    clock = FakeClock()
    reqs = [SyntheticRequest([5, 6, 7], 3), SyntheticRequest([8, 9, 10, 11], 2),
            SyntheticRequest([12, 13], 4, arrival=0.5, tag="late")]
    run = run_workload(engine_on(model, clock), reqs, sleep=clock.sleep)
    by_id = sorted(run.records, key=lambda r: r.arrival)
    first, second, late = sorted(by_id[:2], key=lambda r: -r.output_tokens) + [by_id[2]]
    # both early requests are prefilled in step 1 (ends at 0.01), then decode one token a step
    assert first.ttft == pytest.approx(STEP) and second.ttft == pytest.approx(STEP)
    assert first.itls == pytest.approx([STEP, STEP]) and second.itls == pytest.approx([STEP])
    assert first.e2e == pytest.approx(3 * STEP)
    # the engine idles until 0.5, then serves the late request alone
    assert late.arrival == pytest.approx(0.5) and late.ttft == pytest.approx(STEP)
    assert late.tag == "late" and late.e2e == pytest.approx(4 * STEP)
    assert run.wall_s == pytest.approx(0.5 + 4 * STEP) and run.steps == 3 + 4
    s = run.summary()
    assert s["requests"] == 3 and s["output_tokens_per_s"] == pytest.approx(9 / run.wall_s)
    assert s["ttft_max_s"] == pytest.approx(STEP) and s["itl_p50_s"] == pytest.approx(STEP)
    assert run.timeline[-1].pages_used == 0 and run.timeline[-1].running == 0
    assert max(t.usage for t in run.timeline) > 0


def test_a_late_send_is_charged_to_the_engine(model):
    """A request due while a step runs is sent after it: its TTFT counts from its arrival."""
    clock = FakeClock()
    reqs = [SyntheticRequest([5, 6, 7], 5), SyntheticRequest([8, 9], 1, arrival=0.015)]
    run = run_workload(engine_on(model, clock), reqs, sleep=clock.sleep)
    late = [r for r in run.records if r.arrival > 0][0]
    # sent at 0.02 (after step 2), prefilled in step 3, which ends at 0.03
    assert late.ttft == pytest.approx(0.03 - 0.015)


def test_closed_loop_sends_a_turn_when_the_reply_ends(model):
    clock = FakeClock()
    sessions = chat_sessions(2, turns=3, system_tokens=6, seed=1, vocab_size=model.config.vocab_size,
                             max_user_tokens=5, max_reply_tokens=4)
    run = run_sessions(engine_on(model, clock), sessions, starts=[0.0, 0.2], sleep=clock.sleep)
    assert len(run.records) == 6 and not run.rejected
    for tag in ("turn0", "turn1", "turn2"):
        assert sum(r.tag == tag for r in run.records) == 2
    recs = sorted(run.records, key=lambda r: r.arrival)
    ends = {r.token_times[-1] for r in recs}
    for r in recs:
        if r.tag != "turn0":
            assert r.arrival in ends           # sent the moment a reply ended
    assert sorted(r.output_tokens for r in recs) == sorted(n for s in sessions for n in s.reply_tokens)


def test_rejected_requests_are_reported_and_the_rest_go_on(model):
    clock = FakeClock()
    reqs = [SyntheticRequest([5] * 200, 2), SyntheticRequest([6, 7], 2)]      # 200 > max_model_len
    run = run_workload(engine_on(model, clock), reqs, sleep=clock.sleep)
    assert len(run.rejected) == 1 and "context" in run.rejected[0][1]
    assert [r.output_tokens for r in run.records] == [2]
    assert run.summary()["rejected"] == 1
    assert run.summary(kvlab.bench.SLO(ttft_s=10.0))["slo_attainment"] == 0.5   # the refused one failed
    sent = {r.request_id for r in run.records} | {rid for rid, _ in run.rejected}
    assert len(sent) == 2 and not any(rid.startswith("rejected-") for rid, _ in run.rejected)


def test_stats_every_must_be_positive(model):
    with pytest.raises(ValueError, match="stats_every"):
        run_workload(engine_on(model, FakeClock()), [], stats_every=0)


def test_compile_time_is_off_the_clock_unless_asked(model):
    """A step that compiles for a (simulated) second: the default clock leaves that second out of
    every latency; ``exclude_compile_time=False`` charges it to the requests in flight."""
    def run_with(exclude):
        clock = FakeClock()
        engine = engine_on(model, clock)
        inner = engine.runner.launch

        def compiling_first(*a, **k):
            if engine.runner.steps == 0:                 # the first step "compiles" for 1 s
                clock.t += 1.0
                engine.runner.compile_seconds += 1.0
            return inner(*a, **k)
        engine.runner.launch = compiling_first
        return run_workload(engine, [SyntheticRequest([5, 6, 7], 3)], sleep=clock.sleep,
                            exclude_compile_time=exclude)
    [fast], [slow] = run_with(True).records, run_with(False).records
    assert fast.ttft == pytest.approx(STEP) and slow.ttft == pytest.approx(1.0 + STEP)
    assert fast.itls == slow.itls == pytest.approx([STEP, STEP])


def test_the_runner_times_the_steps_that_compile(model):
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=40, page_size=4), max_model_len=128)
    params = kvlab.SamplingParams(max_tokens=3, ignore_eos=True)
    engine.generate([[7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]], params)   # shapes no other test uses
    first = engine.runner.compile_seconds
    assert engine.num_compilations >= 1 and first > 0
    engine.generate([[7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]], params)   # the same shapes again
    assert engine.runner.compile_seconds == first


def test_a_second_engine_compiles_nothing_its_shapes_share():
    """The jit cache is the process's: an engine whose shapes an earlier one compiled reports no
    XLA compilation (so ``serve``'s warm-up stops after a pass that compiled nothing), while it
    still counts the step signatures it ran."""
    own = LlamaModel(ModelConfig.tiny(num_layers=5), seed=1)          # a model no other test builds
    engines = [kvlab.Engine(own, cache=kvlab.PagedKVCache(num_pages=40, page_size=4), max_model_len=128)
               for _ in range(2)]
    runs = [run_workload(e, [SyntheticRequest([9, 8, 7, 6, 5], 3)]) for e in engines]
    assert runs[0].compilations >= 1 and runs[1].compilations == 0
    assert engines[0].num_compilations == engines[1].num_compilations >= 1


def test_serve_reports_progress_per_stage_and_pass(model):
    """``serve`` tells a progress bar which stage it is in (warm-up, measured; the replay's cold and
    warm passes) and how many of the pass's requests (or a session's turns) have ended."""
    from kvlab.bench.compare import Workload, serve
    from kvlab.bench.presets import vllm
    from kvlab.workloads import long_document_replay

    calls = []
    make = lambda: vllm(kv_tokens=1024, max_num_seqs=4, token_budget=64)   # noqa: E731
    replay = Workload.passes_by_tag("replay", long_document_replay(
        n_docs=3, doc_tokens=32, output_tokens=2, vocab_size=model.config.vocab_size))
    serve(model, make, replay, max_model_len=128, warmup=1, progress=lambda *a: calls.append(a))
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["warm-up 1 cold", "warm-up 1 warm", "measured cold", "measured warm"]
    for stage in stages:
        done = [d for s, d, t in calls if s == stage]
        assert done == [0, 1, 2, 3] and {t for s, _, t in calls if s == stage} == {3}

    calls.clear()
    sessions = [s.fit(128) for s in chat_sessions(2, turns=(2, 2), system_tokens=8, seed=0,
                                                   vocab_size=model.config.vocab_size,
                                                   max_user_tokens=8, max_reply_tokens=4)]
    serve(model, make, Workload.closed_loop("chat", sessions), max_model_len=128, warmup=0,
          progress=lambda *a: calls.append(a))
    assert calls[0] == ("measured", 0, 4) and calls[-1] == ("measured", 4, 4)
