"""Synthetic workloads match their published statistics; the host simulation drives a scheduler
and a cache to completion; the host benchmark script runs; every docstring example runs."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest

import kvlab
from kvlab.bench import simulate
from kvlab.kvcache import ContiguousKVCache, PagedKVCache, RadixKVCache
from kvlab.schedulers import ContinuousScheduler
from kvlab.workloads import shared_prefix, shared_prefix_optimal_hit_rate, sharegpt_like


def test_sharegpt_like_lengths():
    reqs = sharegpt_like(20000, seed=0)
    prompts = np.array([len(r.prompt_token_ids) for r in reqs])
    outputs = np.array([r.max_tokens for r in reqs])
    assert prompts.mean() == pytest.approx(161, rel=0.05)
    assert outputs.mean() == pytest.approx(338, rel=0.05)
    assert prompts.max() <= 1024 and (prompts + outputs).max() <= 2048 and prompts.min() >= 4
    assert [r.prompt_token_ids for r in sharegpt_like(5, seed=3)] == \
        [r.prompt_token_ids for r in sharegpt_like(5, seed=3)]


def test_shared_prefix_structure_and_optimum():
    reqs = shared_prefix(groups=4, prompts_per_group=3, system_tokens=32, question_tokens=8, output_tokens=5)
    systems = {tuple(r.prompt_token_ids[:32]) for r in reqs}
    assert len(reqs) == 12 and len(systems) == 4 and all(len(r.prompt_token_ids) == 40 for r in reqs)
    assert shared_prefix_optimal_hit_rate(groups=64, prompts_per_group=16, system_tokens=2048,
                                          question_tokens=128) == pytest.approx(0.8824, abs=1e-4)


@pytest.mark.parametrize("cache", [RadixKVCache(num_pages=4096, page_size=1),
                                   PagedKVCache(num_pages=256, page_size=16, prefix_caching=True)])
def test_simulated_hit_rate_is_bounded_by_the_optimum(cache):
    kw = dict(groups=6, prompts_per_group=5, system_tokens=64, question_tokens=16)
    reqs = shared_prefix(**kw, output_tokens=8)
    r = simulate(ContinuousScheduler(max_num_seqs=8, max_num_batched_tokens=512), cache, reqs,
                 arrivals_per_step=1)
    optimum = shared_prefix_optimal_hit_rate(**kw)
    assert r.finished == 30 and r.stats.pages_used == 0
    assert 0.6 * optimum < r.stats.hit_rate <= optimum


def test_simulated_static_cache_wastes_what_paging_saves():
    reqs = sharegpt_like(60, seed=4)
    static = simulate(ContinuousScheduler(max_num_seqs=64, max_num_batched_tokens=4096),
                      ContiguousKVCache.for_tokens(16384, max_seq_len=2048), reqs)
    paged = simulate(ContinuousScheduler(max_num_seqs=64, max_num_batched_tokens=4096),
                     PagedKVCache(num_pages=1024, page_size=16), reqs)
    assert static.stats.memory.waste > 0.5 > 0.1 > paged.stats.memory.waste
    assert paged.steps < static.steps          # more requests fit at once


MODULES = [m.name for m in pkgutil.walk_packages(kvlab.__path__, "kvlab.") if m.name != "kvlab.cli"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    """Every module's docstring examples run as written (one test per module, so the workers
    share them)."""
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_docstrings_hold_examples():
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name)))
    assert examples > 300


def test_long_prompt_mix_and_poisson_arrivals():
    from kvlab.workloads import long_prompt_mix, poisson_arrivals

    reqs = long_prompt_mix(4000, seed=0)
    assert np.median([len(r.prompt_token_ids) for r in reqs]) == pytest.approx(2700, rel=0.05)
    assert np.median([r.max_tokens for r in reqs]) == pytest.approx(170, rel=0.08)
    timed = poisson_arrivals(reqs, rate=20.0, seed=1)
    gaps = np.diff([r.arrival for r in timed])
    assert gaps.min() >= 0 and gaps.mean() == pytest.approx(1 / 20, rel=0.05)
    with pytest.raises(ValueError, match="rate must be > 0"):
        poisson_arrivals(reqs, rate=0)


def test_simulated_clock_gives_exact_latencies():
    from kvlab.bench.host_sim import LinearStepCost
    from kvlab.workloads import SyntheticRequest

    cost = LinearStepCost(fixed_s=1.0, per_token_s=0.0, per_kv_token_s=0.0)
    reqs = [SyntheticRequest([3, 4, 5], 3, arrival=0.5), SyntheticRequest([6, 7], 2, arrival=10.0)]
    r = simulate(ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64),
                 PagedKVCache(num_pages=8, page_size=4), reqs, step_cost=cost)
    a, b = r.records()
    assert a.token_times == (1.5, 2.5, 3.5) and b.token_times == (11.0, 12.0)   # idle until 10.0
    m = r.summary()
    assert m["ttft_mean_s"] == pytest.approx(1.0) and m["itl_p50_s"] == pytest.approx(1.0)
    assert r.clock == 12.0 and r.steps == 5
    # Padding as the runner pads: 3 tokens cost as 16, a fixed-shape scheduler pays its budget.
    per_token = LinearStepCost(fixed_s=0.0, per_token_s=1.0, per_kv_token_s=0.0)
    from kvlab.schedulers import PersistentScheduler, Request, SamplingParams, ScheduledSeq, StepPlan
    plan = StepPlan([ScheduledSeq(Request("a", [3, 4, 5], SamplingParams()), 0, 3)])
    assert per_token(plan, ContinuousScheduler()) == 16
    assert per_token(plan, PersistentScheduler(num_slots=2, tokens_per_step=64)) == 64
    assert per_token(plan, PersistentScheduler(num_slots=2, tokens_per_step=768)) == 1024   # runner's pad


@pytest.mark.parametrize("script, expected", [
    ("kv_cache_host", ["| contiguous (static 2048) |", "analytic optimum", "radix (page 1)"]),
    ("schedulers_host", ["chunked (512)", "longest prefix match", "pack batch (ms)"]),
])
def test_host_benchmark_scripts_run(capsys, script, expected):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        module = importlib.import_module(script)
    finally:
        sys.path.pop(0)
    module.main(["--quick"])
    out = capsys.readouterr().out
    assert all(e in out for e in expected)


def test_the_engine_host_benchmark_times_every_phase_per_decode_step(capsys):
    """``benchmarks/engine_host.py``: the engine's host loop with the jitted step replayed, one
    row per batch and decode steps a plan, every phase timed; the real step is back after."""
    import kvlab.engine.runner as runner_module

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        module = importlib.import_module("engine_host")
    finally:
        sys.path.pop(0)
    real = runner_module._jitted_step
    module.main(["--batches", "2", "--steps", "4", "--rounds", "1", "--decode-steps", "1", "2"])
    assert runner_module._jitted_step is real
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| 2 |")]
    assert [r[1].strip() for r in rows] == ["1", "2"]
    assert all(float(cell) > 0 for r in rows for cell in r[2:])


@pytest.mark.parametrize("first_tier,page_size", [("numpy", 16), ("pinned", 16), ("pinned", 64)])
def test_the_tier_replay_loads_an_evicted_document_back_from_the_host(first_tier, page_size):
    """``benchmarks/tier_replay.py`` on the tiny model (CPU): the document re-asked after two
    others evicted it from the GPU is loaded back whole from the host tier (every full page of
    it; with the pinned tier through its prefetch), and the timings come out positive (the tier's
    load and the device write among them: the timer wraps what the executor calls)."""
    from kvlab.models import LlamaModel, ModelConfig
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        module = importlib.import_module("tier_replay")
    finally:
        sys.path.pop(0)
    row = module.replay(LlamaModel(ModelConfig.tiny(), seed=0), 256, reps=1, chunk=64,
                        policy=module.POLICIES["write-through"], warmup=1,
                        tier_type=module.tier_factory(first_tier, None, None), freeze=False,
                        page_size=page_size)
    assert row["loaded_pages"] == 256 // page_size and row["loaded_bytes"] > 0
    assert min(row[k] for k in ("cold", "warm_gpu", "warm_host", "host_before_load", "load", "write")) > 0


def test_the_transformers_peer_benchmark_counts_every_requests_own_tokens(capsys, monkeypatch):
    """``benchmarks/engine_vs_hf.py`` on a tiny shape (CPU): kvlab and transformers' static
    ``generate`` both produce exactly the workload's output tokens, and the table compares them;
    with transformers in the run, JAX's share of the GPU is capped unless the caller set it."""
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "unset")    # records it, to restore after
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        module = importlib.import_module("engine_vs_hf")
    finally:
        sys.path.pop(0)
    rows = module.main(["--shape", "tiny", "--workload", "sharegpt", "--num-requests", "6", "--batch", "4",
                        "--step-tokens", "256", "--max-prompt", "48", "--max-total", "96",
                        "--systems", "kvlab,hf-static"])
    wanted = sum(r.max_tokens for r in kvlab.workloads.sharegpt_like(6, seed=0, vocab_size=256,
                                                                      max_prompt=48, max_total=96))
    assert [r["output_tokens"] for r in rows] == [wanted, wanted]
    assert all(r["tok_per_s"] > 0 for r in rows)
    assert "| kvlab |" in capsys.readouterr().out
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.4"


def test_the_compile_time_benchmark_times_each_stage_and_counts_kernel_calls(capsys):
    """``benchmarks/compile_time.py`` on the tiny shape in interpret mode (CPU): a row per step
    shape with the trace, lowering and compilation timed, and the table printed."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        module = importlib.import_module("compile_time")
    finally:
        sys.path.pop(0)
    rows = module.main(["--shape", "tiny", "--prefill", "2x16", "--decode", "2@24",
                        "--prefill-kernels", "triton", "--xla", "default", "--interpret"])
    assert [(r["kind"], r["spec"]) for r in rows] == [("prefill", "2x16"), ("decode", "2@24")]
    assert all(r[k] > 0 for r in rows for k in ("trace_s", "lower_s", "compile_s"))
    assert all(r["mosaic"] == (0, 0) for r in rows)          # interpret mode: no kernel custom calls
    assert "| decode 2@24 | auto | default |" in capsys.readouterr().out


def test_the_step_dispatch_benchmark_times_the_call_and_the_step(capsys):
    """``benchmarks/step_dispatch.py`` on the tiny shape in interpret mode (CPU): a row per
    decode shape and command-buffer choice (the options compile; the CPU ignores them), the
    dispatch and the step timed."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        module = importlib.import_module("step_dispatch")
    finally:
        sys.path.pop(0)
    rows = module.main(["--shape", "tiny", "--decode", "2@24", "--graphs", "off", "all", "--rounds", "1",
                        "--interpret"])
    assert [r["graphs"] for r in rows] == ["off", "all"]
    assert all(0 < r["dispatch_ms"] and 0 < r["step_ms"] for r in rows)
    assert "| 2@24 | all |" in capsys.readouterr().out
