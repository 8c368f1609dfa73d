"""Multi-turn chat sessions under GPU KV pressure, with and without a host tier (SGLang HiCache's
experiment: prefix hit rate and TTFT when earlier turns' KV is evicted between turns).

    python benchmarks/sessions_tiers.py [--sessions 64] [--rate 5] [--gpu-tokens 32768]
                                        [--host-tokens 1048576]

Host side only, on the simulated clock of ``kvlab.bench.host_sim``: the engine's own loop, cache
and scheduler, plan for plan, with a cost model in place of the model (``LinearStepCost.
llama3_8b_h100``: Llama-3-8B on an H100 from its roofline figures, each page copied to or from
the host charged at an assumed 25 GB/s). The sessions arrive at a fixed rate and every turn
resends its whole history (closed loop); the GPU cache holds a fraction of the live sessions'
histories, so earlier turns are evicted while their users type. The same workload runs without
tiers (an evicted prefix is recomputed) and with a host tier (it is loaded back).
"""

from __future__ import annotations

import argparse

from kvlab.bench.harness import run_sessions
from kvlab.bench.host_sim import LinearStepCost, SimClock, SimulatedExecutor
from kvlab.engine.engine import Engine
from kvlab.engine.metrics import summarize
from kvlab.kvcache import PagedKVCache
from kvlab.kvcache.tiers import HostMemoryTier
from kvlab.schedulers import ContinuousScheduler
from kvlab.workloads import chat_sessions


def run(sessions, starts, *, gpu_tokens: int, host_tokens: int, page_size: int = 16) -> dict:
    tiers = None if host_tokens == 0 else HostMemoryTier(num_pages=host_tokens // page_size)
    cache = PagedKVCache(num_pages=gpu_tokens // page_size, page_size=page_size, prefix_caching=True,
                         tiers=tiers)
    scheduler = ContinuousScheduler(max_num_seqs=64, max_num_batched_tokens=8192)
    clock = SimClock()
    executor = SimulatedExecutor(clock, scheduler, step_cost=LinearStepCost.llama3_8b_h100())
    engine = Engine(cache=cache, scheduler=scheduler, executor=executor, clock=clock, steps_ahead=0)
    result = run_sessions(engine, sessions, starts=starts, sleep=clock.sleep, exclude_compile_time=False)
    s, summary = cache.stats(), summarize(result.records, clock())
    return {"host tokens": host_tokens, "hit rate": s.hit_rate, "ttft_mean_s": summary["ttft_mean_s"],
            "ttft_p50_s": summary["ttft_p50_s"], "ttft_p99_s": summary["ttft_p99_s"],
            "output tok/s": summary["output_tokens_per_s"],
            "loads": 0 if s.tiers is None else sum(s.tiers.loads_per_tier),
            "offloads": 0 if s.tiers is None else s.tiers.offloads, "evictions": s.evictions}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--rate", type=float, default=5.0, help="sessions started per simulated second")
    ap.add_argument("--gpu-tokens", type=int, default=32768)
    ap.add_argument("--host-tokens", type=int, default=1 << 20)
    args = ap.parse_args()
    drawn = chat_sessions(args.sessions, turns=args.turns, system_tokens=512, seed=0)
    sessions = [s.fit(8000) for s in drawn]
    starts = [i / args.rate for i in range(len(sessions))]
    rows = [run(sessions, starts, gpu_tokens=args.gpu_tokens, host_tokens=h) for h in (0, args.host_tokens)]
    print(f"{args.sessions} sessions x {args.turns} turns, 512-token system prompts, "
          f"{args.rate:g} sessions/s, GPU cache {args.gpu_tokens} tokens; simulated clock, "
          f"Llama-3-8B on an H100")
    print("| host tier (tokens) | prefix hit rate | TTFT mean | TTFT p50 | TTFT p99 | output tok/s |"
          " pages loaded | pages offloaded | GPU evictions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['host tokens']} | {r['hit rate']:.1%} | {r['ttft_mean_s'] * 1e3:.0f} ms | "
              f"{r['ttft_p50_s'] * 1e3:.0f} ms | {r['ttft_p99_s'] * 1e3:.0f} ms | {r['output tok/s']:.0f} | "
              f"{r['loads']} | {r['offloads']} | {r['evictions']} |")


if __name__ == "__main__":
    main()
