"""Host-side measurements of the scheduler family (no model, no device; any CPU):

1. TTFT / inter-token latency / throughput / preemptions of each scheduler on a ShareGPT-like
   Poisson workload and on a mix with long (summarization-like) prompts, on a simulated clock:
   each step lasts what ``LinearStepCost.llama3_8b_h100()`` says for its plan;
2. prefix hit rate of longest-prefix-match vs FCFS order on the shared-prefix workload under
   cache pressure;
3. host scheduling cost per step with 256 running sequences (schedule + batch packing + update).

    python benchmarks/schedulers_host.py            # the figures in docs/benchmarks.md
    python benchmarks/schedulers_host.py --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from kvlab.bench import LinearStepCost, markdown_table, simulate
from kvlab.engine.runner import fill_inputs
from kvlab.engine.step_inputs import InputLayout
from kvlab.kvcache import HostTier, PagedKVCache, RadixKVCache
from kvlab.schedulers import (
    FCFS,
    ChunkedScheduler,
    ContinuousScheduler,
    LongestPrefixMatch,
    PersistentScheduler,
    Request,
    ReserveAdmission,
    SamplingParams,
    SwapPreemption,
)
from kvlab.schedulers.shapes import StepShape
from kvlab.workloads import (
    long_prompt_mix,
    poisson_arrivals,
    shared_prefix,
    shared_prefix_optimal_hit_rate,
    sharegpt_like,
)

PCT = {"hit rate": ".1%", "of optimum": ".1%"}
KV_TOKENS = 65536 * 7      # ~60 GB of Llama-3-8B KV (128 KiB a token) beside 16 GB of weights


def schedulers():
    return {
        "continuous (whole prompt, 8192)": lambda: ContinuousScheduler(max_num_seqs=256,
                                                                       max_num_batched_tokens=8192),
        "continuous + reserve": lambda: ContinuousScheduler(max_num_seqs=256, max_num_batched_tokens=8192,
                                                            admission=ReserveAdmission()),
        "continuous + swap": lambda: ContinuousScheduler(max_num_seqs=256, max_num_batched_tokens=8192,
                                                         preemption=SwapPreemption()),
        "chunked (2048)": lambda: ChunkedScheduler(max_num_seqs=256, max_num_batched_tokens=2048),
        "chunked (512)": lambda: ChunkedScheduler(max_num_seqs=256, max_num_batched_tokens=512),
        "persistent (256 slots, 512)": lambda: PersistentScheduler(num_slots=256, tokens_per_step=512),
    }


def latency_table(requests, kv_tokens: int) -> list[dict]:
    rows = []
    for name, make in schedulers().items():
        cache = PagedKVCache(num_pages=kv_tokens // 16, page_size=16,
                             host_tier=HostTier(num_pages=4 * kv_tokens // 16))
        r = simulate(make(), cache, requests, step_cost=LinearStepCost.llama3_8b_h100())
        m = r.summary()
        rows.append({"scheduler": name, "TTFT P50 (ms)": 1e3 * m["ttft_p50_s"],
                     "TTFT P99 (ms)": 1e3 * m["ttft_p99_s"], "ITL P50 (ms)": 1e3 * m["itl_p50_s"],
                     "ITL P99 (ms)": 1e3 * m["itl_p99_s"], "output tok/s": m["output_tokens_per_s"],
                     "preemptions": r.preemptions, "steps": r.steps})
    return rows


def lpm_table(sizes: dict, capacities: list[int]) -> tuple[float, list[dict]]:
    optimum = shared_prefix_optimal_hit_rate(groups=sizes["groups"], prompts_per_group=sizes["per_group"],
                                             system_tokens=sizes["system"], question_tokens=sizes["question"])
    rows = []
    for tokens in capacities:
        for name, policy in [("FCFS", FCFS()), ("longest prefix match", LongestPrefixMatch(max_queue=4096))]:
            reqs = shared_prefix(groups=sizes["groups"], prompts_per_group=sizes["per_group"],
                                 system_tokens=sizes["system"], question_tokens=sizes["question"],
                                 output_tokens=sizes["output"], seed=2)
            sched = ContinuousScheduler(max_num_seqs=256, max_num_batched_tokens=8192, policy=policy)
            r = simulate(sched, RadixKVCache(num_pages=tokens, page_size=1), reqs)
            rows.append({"policy": name, "capacity": tokens, "hit rate": r.stats.hit_rate,
                         "of optimum": r.stats.hit_rate / optimum, "steps": r.steps,
                         "host ms/step": r.host_ms_per_step})
    return optimum, rows


def host_cost_table(num_running: int, steps: int) -> list[dict]:
    """Host time per step with ``num_running`` decoding sequences of ~1k tokens."""
    rows = []
    rng = np.random.default_rng(5)
    for sname, make in [("continuous", lambda: ContinuousScheduler(max_num_seqs=num_running,
                                                                   max_num_batched_tokens=8192)),
                        ("chunked", lambda: ChunkedScheduler(max_num_seqs=num_running,
                                                             max_num_batched_tokens=2048)),
                        ("persistent", lambda: PersistentScheduler(num_slots=num_running,
                                                                   tokens_per_step=2048))]:
        for cname, cache in [("paged 16", lambda: PagedKVCache(num_pages=40000, page_size=16)),
                             ("paged 16 + prefix", lambda: PagedKVCache(num_pages=40000, page_size=16,
                                                                        prefix_caching=True)),
                             ("radix 1", lambda: RadixKVCache(num_pages=640000, page_size=1))]:
            sched, kv = make(), cache()
            sched.attach(kv)
            for i in range(num_running):
                sched.add(Request(f"r{i}", rng.integers(3, 32000, 1000).tolist(),
                                  SamplingParams(max_tokens=10 * steps, ignore_eos=True)))
            while sched.waiting or any(r.num_computed_tokens < r.num_tokens - 1 for r in sched.running):
                plan = sched.schedule()
                sched.update(plan, rng.integers(3, 32000, plan.num_rows))
            t_sched = t_pack = t_update = 0.0
            for _ in range(steps):
                t0 = time.perf_counter()
                plan = sched.schedule()
                t1 = time.perf_counter()
                limits = StepShape(tokens=sched.max_num_batched_tokens, rows=num_running,
                                   pages=2048 // kv.page_size)
                used = StepShape(tokens=plan.num_tokens, rows=plan.num_rows,
                                 pages=int(plan.table.num_pages.max()))
                shape = sched.shapes.pad(used, limits)
                fill_inputs(plan, InputLayout(tokens=shape.tokens, rows=shape.rows, changes=1024).allocate())
                t2 = time.perf_counter()
                sched.update(plan, rng.integers(3, 32000, plan.num_rows))
                t3 = time.perf_counter()
                assert len(plan.seqs) == num_running
                t_sched, t_pack, t_update = t_sched + t1 - t0, t_pack + t2 - t1, t_update + t3 - t2
            rows.append({"scheduler": sname, "cache": cname, "schedule (ms)": 1e3 * t_sched / steps,
                         "pack batch (ms)": 1e3 * t_pack / steps, "update (ms)": 1e3 * t_update / steps,
                         "total (ms)": 1e3 * (t_sched + t_pack + t_update) / steps})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args(argv)
    q = args.quick
    cpu = platform.processor() or platform.machine()
    print(f"# schedulers_host on {cpu}, Python {platform.python_version()}")
    t = time.perf_counter()
    cost = LinearStepCost.llama3_8b_h100()
    print(f"\nStep cost model (Llama-3-8B bf16 on H100): {1e3 * cost.fixed_s:.2f} ms + "
          f"{1e6 * cost.per_token_s:.1f} us/token + {1e9 * cost.per_kv_token_s:.0f} ns/KV token + "
          f"{1e6 * cost.per_swapped_token_s:.1f} us/swapped token")
    n = 60 if q else 1000
    chat = poisson_arrivals(sharegpt_like(n, seed=1), rate=30.0, seed=1)
    print(f"\n## 1a. ShareGPT-like, {n} requests, Poisson 30 req/s, {KV_TOKENS} KV tokens\n")
    print(markdown_table(latency_table(chat, KV_TOKENS), float_format=".1f"))
    tight = 16384 if q else 65536
    print(f"\n## 1b. The same under memory pressure: {tight} KV tokens\n")
    print(markdown_table(latency_table(chat, tight), float_format=".1f"))
    rng = np.random.default_rng(7)
    mixed = sharegpt_like(int(0.8 * n), seed=2) + long_prompt_mix(n - int(0.8 * n), seed=3)
    mixed = poisson_arrivals([mixed[i] for i in rng.permutation(len(mixed))], rate=10.0, seed=2)
    print(f"\n## 1c. Mix: 80% ShareGPT-like + 20% long prompts (median 2.7k), {n} requests, "
          f"Poisson 10 req/s\n")
    print(markdown_table(latency_table(mixed, KV_TOKENS), float_format=".1f"))
    sizes = dict(groups=4, per_group=4, system=256, question=32, output=16) if q else \
        dict(groups=64, per_group=16, system=2048, question=128, output=256)
    optimum, rows = lpm_table(sizes, [4096] if q else [49152, 98304])
    print(f"\n## 2. Longest prefix match vs FCFS, shared prefix {sizes}, all queued at once, radix "
          f"cache; optimum {optimum:.1%}\n")
    print(markdown_table(rows, PCT, ".2f"))
    print("\n## 3. Host cost per step, 256 running sequences of ~1k tokens (decode)\n")
    print(markdown_table(host_cost_table(16 if q else 256, 5 if q else 50), float_format=".2f"))
    print(f"\n(total {time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
