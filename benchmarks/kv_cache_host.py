"""Host-side measurements of the KV cache family (no model, no device; any CPU):

1. KV memory waste on a ShareGPT-like trace, every cache given the same memory, in the
   PagedAttention paper's categories (stored, reserved, internal and external fragmentation);
2. prefix hit rate on SGLang's generated shared-prefix workload against the analytic optimum,
   for the hash-chained paged cache and the radix cache, at several cache sizes;
3. bookkeeping cost: ``match_prefix`` and a whole admit/allocate/commit/free cycle with 10k
   sequences cached.

    python benchmarks/kv_cache_host.py            # the figures in docs/benchmarks.md (~3 min)
    python benchmarks/kv_cache_host.py --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from kvlab.bench import markdown_table, simulate
from kvlab.kvcache import BlockedKVCache, BuiltinBlockHasher, ContiguousKVCache, PagedKVCache, RadixKVCache
from kvlab.schedulers import ContinuousScheduler
from kvlab.workloads import shared_prefix, shared_prefix_optimal_hit_rate, sharegpt_like


def waste_table(num_requests: int, memory_tokens: int) -> list[dict]:
    """Every cache with ``memory_tokens`` slots serving the same ShareGPT-like trace."""
    caches = {
        "contiguous (static 2048)": ContiguousKVCache.for_tokens(memory_tokens, max_seq_len=2048),
        "paged (page 16)": PagedKVCache(num_pages=memory_tokens // 16, page_size=16),
        "blocked (block 64)": BlockedKVCache(num_blocks=memory_tokens // 64, block_tokens=64,
                                             prefix_caching=False),
        "radix (page 1)": RadixKVCache(num_pages=memory_tokens, page_size=1),
    }
    rows = []
    for name, cache in caches.items():
        sched = ContinuousScheduler(max_num_seqs=256, max_num_batched_tokens=4096)
        r = simulate(sched, cache, sharegpt_like(num_requests, seed=1))
        m = r.stats.memory
        rows.append(dict(cache=name, stored=m.stored, reserved=m.reserved, internal=m.internal,
                         external=m.external, waste=m.waste, steps=r.steps, preemptions=r.preemptions))
    return rows


def hit_rate_table(groups: int, per_group: int, system: int, question: int, output: int,
                   capacities: list[int]) -> tuple[float, list[dict]]:
    optimum = shared_prefix_optimal_hit_rate(groups=groups, prompts_per_group=per_group,
                                             system_tokens=system, question_tokens=question)
    rows = []
    for tokens in capacities:
        for name, make in [("paged hash (page 16)",
                            lambda t: PagedKVCache(num_pages=t // 16, page_size=16, prefix_caching=True)),
                           ("radix (page 1)", lambda t: RadixKVCache(num_pages=t, page_size=1)),
                           ("radix (page 16)", lambda t: RadixKVCache(num_pages=t // 16, page_size=16))]:
            cache = make(tokens)
            sched = ContinuousScheduler(max_num_seqs=256, max_num_batched_tokens=8192)
            reqs = shared_prefix(groups=groups, prompts_per_group=per_group, system_tokens=system,
                                 question_tokens=question, output_tokens=output, seed=2)
            r = simulate(sched, cache, reqs, arrivals_per_step=2)
            rows.append(dict(cache=name, capacity=tokens, hit_rate=r.stats.hit_rate,
                             of_optimum=r.stats.hit_rate / optimum, evictions=r.stats.evictions,
                             preemptions=r.preemptions))
    return optimum, rows


def host_cost_table(num_cached: int, num_ops: int) -> list[dict]:
    """Fill each cache with ``num_cached`` finished sequences (100 shared 256-token system prompts
    + a unique 128-token question each), then time lookups and admit/allocate/commit/free cycles."""
    rng = np.random.default_rng(3)
    systems = [rng.integers(3, 32000, 256).tolist() for _ in range(100)]

    def seq():
        return systems[int(rng.integers(100))] + rng.integers(3, 32000, 128).tolist()

    fill = [seq() for _ in range(num_cached)]
    probes = [seq() for _ in range(num_ops)]
    tokens = 100 * 256 + (num_cached + num_ops) * 384
    caches = {
        "paged hash sha256 (page 16)": PagedKVCache(num_pages=tokens // 16, page_size=16,
                                                    prefix_caching=True),
        "paged hash builtin (page 16)": PagedKVCache(num_pages=tokens // 16, page_size=16,
                                                     prefix_caching=True, block_hasher=BuiltinBlockHasher()),
        "radix (page 1)": RadixKVCache(num_pages=tokens, page_size=1),
        "radix (page 16)": RadixKVCache(num_pages=tokens // 16, page_size=16),
    }
    rows = []
    for name, cache in caches.items():
        def cycle(i, toks, cache=cache):
            cache.admit(i, toks)
            cache.allocate(i, len(toks))
            cache.commit(i, toks, len(toks))
            cache.free(i)

        for i, toks in enumerate(fill):
            cycle(i, toks)
        t0 = time.perf_counter()
        matched = sum(cache.match_prefix(p) for p in probes)
        t1 = time.perf_counter()
        for i, toks in enumerate(probes):
            cycle(num_cached + i, toks)
        t2 = time.perf_counter()
        rows.append(dict(cache=name, match_us=1e6 * (t1 - t0) / num_ops,
                         cycle_us=1e6 * (t2 - t1) / num_ops, matched=matched / num_ops))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args(argv)
    q = args.quick
    cpu = platform.processor() or platform.machine()
    print(f"# kv_cache_host on {cpu}, Python {platform.python_version()}")
    pct = {k: ".1%" for k in ("stored", "reserved", "internal", "external", "waste", "hit_rate",
                              "of_optimum")}
    t = time.perf_counter()
    print("\n## 1. KV memory waste, ShareGPT-like trace (time-averaged share of the cache)\n")
    print(markdown_table(waste_table(100 if q else 1000, 16384 if q else 65536), pct))
    print("\n## 2. Prefix hit rate, generated shared prefix\n")
    sizes = dict(groups=4, per_group=4, system=256, question=32, output=16) if q else \
        dict(groups=64, per_group=16, system=2048, question=128, output=256)
    optimum, rows = hit_rate_table(**sizes, capacities=[8192] if q else [49152, 98304, 196608])
    print(f"analytic optimum: {optimum:.1%} ({sizes})\n")
    print(markdown_table(rows, pct))
    print("\n## 3. Host cost with many cached sequences\n")
    n = 500 if q else 10000
    print(f"{n} cached sequences; per operation:\n")
    print(markdown_table(host_cost_table(n, 200 if q else 2000), {"match_us": ".1f", "cycle_us": ".1f",
                                                             "matched": ".0f"}))
    print(f"\n(total {time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
