"""Metric definitions against hand-computed traces."""

from __future__ import annotations

import math

import pytest

from kvlab import SamplingParams
from kvlab.bench.metrics import SLO, RequestRecord, by_tag, describe, summarize
from kvlab.schedulers import Request


def rec(rid, arrival, times, prompt=10, tag="", preemptions=0, reason="length"):
    return RequestRecord(request_id=rid, arrival=arrival, token_times=tuple(times), prompt_tokens=prompt,
                         tag=tag, preemptions=preemptions, finish_reason=reason)


def test_per_request_definitions():
    r = rec("a", 1.0, [1.5, 1.75, 2.0, 3.0])
    assert r.ttft == 0.5 and r.e2e == 2.0 and r.output_tokens == 4
    assert r.itls == [0.25, 0.25, 1.0]
    assert r.tpot == pytest.approx(1.5 / 3)
    one = rec("b", 0.0, [0.2])
    assert one.tpot is None and one.itls == [] and one.ttft == 0.2
    none = rec("c", 0.0, [])
    assert none.ttft is None and none.e2e is None


def test_run_summary_by_hand():
    records = [rec("a", 0.0, [1.0, 2.0, 3.0], prompt=4), rec("b", 1.0, [4.0, 4.5], prompt=6, preemptions=1)]
    s = summarize(records, wall_s=5.0, slo=SLO(ttft_s=2.0, tpot_s=0.9))
    assert s["request_throughput"] == pytest.approx(2 / 5)
    assert s["output_tokens_per_s"] == pytest.approx(5 / 5)
    assert s["total_tokens_per_s"] == pytest.approx(15 / 5)
    assert s["ttft_mean_s"] == pytest.approx((1.0 + 3.0) / 2) and s["ttft_max_s"] == 3.0
    assert s["itl_mean_s"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)           # pooled gaps
    assert s["tpot_mean_s"] == pytest.approx((1.0 + 0.5) / 2)                # one value per request
    assert s["e2e_p50_s"] == pytest.approx((3.0 + 3.5) / 2)                  # e2e 3.0 and 4.0 - 1.0
    assert s["preemptions"] == 1.0
    # "a": ttft 1.0 ok but tpot 1.0 > 0.9; "b": ttft 3.0 > 2.0 -> no request meets the SLO
    assert s["goodput_req_per_s"] == 0.0 and s["slo_attainment"] == 0.0
    s2 = summarize(records, wall_s=5.0, slo=SLO(ttft_s=3.0))
    assert s2["goodput_req_per_s"] == pytest.approx(2 / 5) and s2["slo_attainment"] == 1.0


def test_burst_arrivals_refusals_and_aborts():
    """A multi-step burst (tokens stamped with one time) is one arrival: one ITL gap, as vLLM's
    client records one per streamed chunk, not zeros; refused requests (``failed``) and aborted
    ones count against SLO attainment."""
    burst = rec("a", 0.0, [1.0, 2.0, 2.0, 2.0, 3.0, 3.0])
    assert burst.itls == [1.0, 1.0] and burst.tpot == pytest.approx(2.0 / 5)
    ok, aborted = rec("b", 0.0, [0.1, 0.2]), rec("c", 0.0, [0.1, 0.2], reason="abort")
    s = summarize([ok, aborted], wall_s=1.0, slo=SLO(ttft_s=1.0), failed=2)
    assert s["goodput_req_per_s"] == 1.0 and s["slo_attainment"] == 0.25


def test_percentiles_and_empty_series():
    d = describe(range(1, 101))
    assert d["mean"] == 50.5 and d["p50"] == pytest.approx(50.5) and d["p99"] == pytest.approx(99.01)
    assert d["max"] == 100
    assert math.isnan(describe([])["p90"])
    with pytest.raises(ValueError, match="wall_s must be > 0"):
        summarize([], wall_s=0)


def test_by_tag_and_from_a_scheduler_request():
    records = [rec("a", 0, [1, 2], tag="cold"), rec("b", 0, [3, 4], tag="cold"),
               rec("c", 10, [10.5], tag="warm")]
    out = by_tag(records, {"cold": 4.0, "warm": 1.0})
    assert out["cold"]["requests"] == 2 and out["warm"]["ttft_mean_s"] == 0.5
    req = Request("r", [1, 2, 3], SamplingParams(max_tokens=2), arrival_time=0.25)
    req.append_token(5, 1.0)
    req.append_token(6, 1.5)
    r = RequestRecord.of(req, tag="x")
    assert (r.ttft, r.tpot, r.prompt_tokens, r.tag) == (0.75, 0.5, 3, "x")


def test_simulated_clock_with_known_step_times_gives_exact_latencies():
    """A fake model whose every step takes 10 ms: an idle engine starts a step when a request
    arrives, so its prefill step ends 10 ms later (TTFT) and each decode step adds 10 ms (ITL)."""
    from kvlab.bench import LinearStepCost, simulate
    from kvlab.kvcache import PagedKVCache
    from kvlab.schedulers import ContinuousScheduler
    from kvlab.workloads import SyntheticRequest

    reqs = [SyntheticRequest([5, 6, 7], 4, arrival=0.005), SyntheticRequest([8, 9], 2, arrival=1.0)]
    sim = simulate(ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64),
                   PagedKVCache(num_pages=8, page_size=4), reqs,
                   step_cost=LinearStepCost(fixed_s=0.01, per_token_s=0.0, per_kv_token_s=0.0))
    a, b = sim.records()
    assert a.ttft == pytest.approx(0.01) and a.itls == pytest.approx([0.01] * 3)
    assert a.tpot == pytest.approx(0.01)
    assert a.e2e == pytest.approx(0.04)
    assert b.ttft == pytest.approx(0.01) and b.e2e == pytest.approx(0.02)
    s = summarize(sim.records(), wall_s=sim.clock, slo=SLO(ttft_s=0.01 + 1e-9))
    assert s["slo_attainment"] == 1.0 and s["itl_max_s"] == pytest.approx(0.01)
