"""Long-document replay through a GPU cache too small for the documents (TGI's and TensorRT-LLM's
scenario): TTFT of a document asked cold (its prefill computed), re-asked while its KV is still on
the GPU, and re-asked after it was evicted to the host tier (``PagedKVCache(tiers=...)``: its
pages loaded back instead of recomputed), with the bytes loaded and the bandwidth achieved, against
the host-to-device bandwidth measured in the same run.

    python benchmarks/tier_replay.py [--shapes llama-3.2-1b llama-3.1-8b] [--lengths 8192 16384 32768]
                                     [--policies write-back write-through] [--first-tier pinned numpy]
                                     [--layer-loop default scan] [--page-size 16]

Random bf16 weights and random token ids (a replay measures time, not text). The GPU cache holds
1.25 documents, the host tier four, so asking documents B and C after A evicts A's pages to the
host.
Every scenario runs ``--warmup`` times untimed first (compilation), then ``--reps`` times; the
medians are reported. After the warm-up the heap is frozen (``kvlab.bench.freeze_heap``: full
garbage collections over the process's objects stalled whole rounds) unless ``--no-freeze-heap``.
TTFT is the request's own (arrival to first token, on the engine's clock), in rounds with nothing
synchronised; one more round then times the executor's page copies of the warm-from-host ask (each
copy synchronised, so that round's TTFT is not reported): all of them, and apart the device gather
of the pages the step evicts to the host (write-back) and the device write of the loaded pages.
``--first-tier pinned`` keeps the host tier in pinned memory
(``PinnedHostTier``: copies by DMA), ``numpy`` in a NumPy array (``HostMemoryTier``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import kvlab
from kvlab.bench import freeze_heap
from kvlab.engine import page_copies
from kvlab.engine.defaults import kv_bytes_per_token
from kvlab.kvcache.tiers import HostMemoryTier, PinnedHostTier, TierChain, WriteBackOnEviction, WriteThrough
from kvlab.kvcache.tiers import moves as tier_moves
from kvlab.models import LlamaModel, ModelConfig
from kvlab.models.config import Llama3RopeScaling
from kvlab.models.layer_loop import ScanLayers, default_layer_loop


def llama_3_1_8b() -> ModelConfig:
    """The Llama-3-8B shape with Llama 3.1's 128k context (its RoPE scaling): same weights' shapes."""
    return dataclasses.replace(ModelConfig.llama_3_8b(), max_position_embeddings=131072,
                               rope_scaling=Llama3RopeScaling(factor=8.0))


SHAPES = {"llama-3.2-1b": ModelConfig.llama_3_2_1b, "llama-3.1-8b": llama_3_1_8b, "tiny": ModelConfig.tiny}
PAGE = 16                # tokens a page (vLLM's default; TensorRT-LLM's blocks are 64)
POLICIES = {"write-back": WriteBackOnEviction(), "write-through": WriteThrough()}
TIERS = {"numpy": HostMemoryTier, "pinned": PinnedHostTier}
LAYER_LOOPS = {"default": default_layer_loop, "scan": ScanLayers}


def tier_factory(name: str, slice_mib: int | None, bank_mib: int | None):
    """The first tier's class (for the pinned tier, with ``slice_bytes`` and ``bank_bytes`` when
    given)."""
    if name != "pinned":
        return TIERS[name]
    sizes = {key: mib << 20 for key, mib in (("slice_bytes", slice_mib), ("bank_bytes", bank_mib)) if mib}
    return lambda num_pages: PinnedHostTier(num_pages=num_pages, **sizes)


def host_to_device_gbps(nbytes: int = 1 << 30) -> dict:
    """Host-to-device copy bandwidth (GB/s) of one ``nbytes`` array, from pageable NumPy memory
    and, where JAX offers it, from pinned host memory."""
    dev = jax.devices()[0]
    x = np.ones(nbytes // 2, np.uint16)
    out = {}

    def best(f, reps=3):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(f())
            times.append(time.perf_counter() - t)
        return nbytes / min(times) / 1e9

    out["h2d_pageable"] = best(lambda: jax.device_put(x, dev))
    try:
        pinned = jax.sharding.SingleDeviceSharding(dev, memory_kind="pinned_host")
        x_pinned = jax.device_put(x, pinned)
        out["h2d_pinned"] = best(lambda: jax.device_put(x_pinned, jax.sharding.SingleDeviceSharding(dev)))
    except Exception as e:  # noqa: BLE001 - a runtime without memory kinds: say so
        out["h2d_pinned_error"] = f"{type(e).__name__}: {str(e)[:120]}"
    return out


class CopyTimer:
    """Times the executor's page copies, and apart (synchronised) the device read of the pages
    going out (offloads), the tier's store and load of records, and the device write of the pages
    coming in (loads)."""

    def __init__(self, executor):
        self.executor, self.inner, self.records = executor, executor._copy_pages, []
        executor._copy_pages = self
        self.phases = {}
        wrapped = [(page_copies, "gather_pages"), (page_copies, "write_pages")]
        wrapped += [(tier, name) for tier in executor.tiers for name in ("store_records", "load_pieces")]
        self._originals = [(owner, name, getattr(owner, name)) for owner, name in wrapped]
        for owner, name, f in self._originals:        # synchronised, timed
            setattr(owner, name, self._timed(name, f))

    def close(self) -> None:
        """Put back what the timer wrapped (a later engine in the process runs unsynchronised)."""
        self.executor._copy_pages = self.inner
        for owner, name, f in self._originals:
            if owner is page_copies:
                setattr(owner, name, f)
            else:
                delattr(owner, name)                   # the tier's own method again

    def _timed(self, name, f):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = f(*args, **kwargs)
            if name == "load_pieces":                 # a generator: every piece, landed
                out = list(out)
                jax.block_until_ready([piece.data for piece in out])
            else:
                out = jax.block_until_ready(out)
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t
            return out
        return timed

    def __call__(self, plan):
        self.phases = {}
        t = time.perf_counter()
        self.inner(plan)
        jax.block_until_ready(self.executor.storage)
        loads = sum(isinstance(move, tier_moves.Load) for move in plan.tier_moves)
        offloads = sum(isinstance(move, tier_moves.Offload) for move in plan.tier_moves)
        if loads:
            self.records.append((time.perf_counter() - t, loads, offloads, dict(self.phases)))


def ask(engine, prompt):
    """One request for one token: its ``RequestRecord`` (``ttft``: from its arrival to its first
    token, on the engine's clock)."""
    return engine.generate([prompt], kvlab.SamplingParams(max_tokens=1, ignore_eos=True))[0].metrics


class LaunchClock:
    """Stamps (unsynchronised) when the executor starts and ends launching each plan that loads
    pages from a tier: the host's work before the load, and the launch's own."""

    def __init__(self, executor):
        self.inner, self.stamps = executor.launch, []
        executor.launch = self

    def __call__(self, plan):
        start = time.perf_counter()
        future = self.inner(plan)
        if any(isinstance(move, tier_moves.Load) for move in plan.tier_moves):
            self.stamps.append((start, time.perf_counter()))
        return future


def replay(model, length: int, reps: int, chunk: int, policy, warmup: int, tier_type,
           freeze: bool = True, page_size: int = PAGE) -> dict:
    c = model.config
    doc_pages = length // page_size + 1
    host = TierChain(tiers=[tier_type(num_pages=4 * doc_pages)], policy=policy)
    cache = kvlab.PagedKVCache(num_pages=doc_pages * 5 // 4 + max(1, 128 // page_size), page_size=page_size,
                               prefix_caching=True, tiers=host)
    engine = kvlab.Engine(model, cache=cache, max_model_len=length + 2 * page_size,
                          scheduler=kvlab.ChunkedScheduler(max_num_seqs=1, max_num_batched_tokens=chunk))
    rng = np.random.default_rng(length)
    rows = {"cold": [], "warm_gpu": [], "warm_host": [], "host_before_load": [], "load_launch": []}
    launches = LaunchClock(engine.executor)

    def round_trip():
        a, b, d = (rng.integers(0, c.vocab_size, length).tolist() for _ in range(3))
        cold = ask(engine, a + [1]).ttft
        warm_gpu = ask(engine, a + [2]).ttft
        ask(engine, b + [1])                         # these two evict all of a's pages to the host
        ask(engine, d + [1])
        hits = cache.match_prefix_by_tier(a)
        warm = ask(engine, a + [3])
        start, end = launches.stamps[-1]
        return cold, warm_gpu, hits, warm.ttft, start - warm.arrival, end - start

    for rep in range(warmup + reps):                # the first rounds compile
        if rep == warmup and freeze:
            freeze_heap()                           # compiled: the heap out of the collector's way
        cold, warm_gpu, hits, warm_host, before, launch = round_trip()
        print(f"  L={length} rep {rep}: cold {cold * 1e3:.1f} ms, warm GPU {warm_gpu * 1e3:.1f} ms, "
              f"hits (GPU, host) {hits}, warm host {warm_host * 1e3:.1f} ms (host work before its "
              f"launch {before * 1e3:.1f} ms, the launch {launch * 1e3:.1f} ms)", flush=True)
        if rep >= warmup:
            for k, v in zip(rows, (cold, warm_gpu, warm_host, before, launch)):
                rows[k].append(v)
    timer = CopyTimer(engine.executor)                # a last round, its copies timed apart
    try:
        round_trip()
    finally:
        timer.close()
    load_s, pages, offloads, phases = timer.records[-1]
    print(f"  L={length} copies of the warm-from-host ask, synchronised: {load_s * 1e3:.1f} ms "
          f"({pages} pages in, {offloads} out; "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in phases.items()) + ")", flush=True)
    page_bytes = page_size * kv_bytes_per_token(c, jnp.bfloat16)
    med = {k: float(np.median(v)) for k, v in rows.items()}
    med.update(copies=load_s, loaded_pages=pages, offloaded_pages=offloads,
               write=phases.get("write_pages", 0.0), load=phases.get("load_pieces", 0.0))
    med["loaded_bytes"] = med["loaded_pages"] * page_bytes
    med["write_gbps"] = med["loaded_bytes"] / med["write"] / 1e9
    med["speedup_host"] = med["cold"] / med["warm_host"]
    med["length"] = length
    return med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["llama-3.2-1b", "llama-3.1-8b"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed rounds first (compilation; the third round is the first whose "
                         "document lies across a bank the tier fills in part, at the 8B shape)")
    ap.add_argument("--chunk", type=int, default=8192, help="prefill chunk (max_num_batched_tokens)")
    ap.add_argument("--page-size", type=int, default=PAGE,
                    help="tokens a page (the host's bookkeeping is per page)")
    ap.add_argument("--policies", nargs="+", choices=sorted(POLICIES), default=["write-back"])
    ap.add_argument("--first-tier", nargs="+", choices=sorted(TIERS), default=["pinned"])
    ap.add_argument("--layer-loop", choices=sorted(LAYER_LOOPS), default="default",
                    help="scan: fewer compilations at 8B (each step also copies the layers' weights)")
    ap.add_argument("--slice-mib", type=int, default=None,
                    help="the pinned tier's slice size (MiB; default: PinnedHostTier's)")
    ap.add_argument("--bank-mib", type=int, default=None,
                    help="the pinned tier's bank size (MiB; default: PinnedHostTier's)")
    ap.add_argument("--no-freeze-heap", action="store_true",
                    help="leave the heap to the garbage collector after the warm-up "
                         "(kvlab.bench.freeze_heap)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = jax.devices()[0]
    bw = host_to_device_gbps()
    print(f"{dev.device_kind}, JAX {jax.__version__}; copies of 1 GiB: "
          + ", ".join(f"{k} {v:.1f} GB/s" if isinstance(v, float) else f"{k} {v}" for k, v in bw.items()),
          flush=True)
    results = []
    for shape in args.shapes:
        model = LlamaModel(SHAPES[shape](), dtype=jnp.bfloat16, seed=0,
                           layer_loop=LAYER_LOOPS[args.layer_loop]())
        for length in args.lengths:
            for policy in args.policies:
                for tier in args.first_tier:
                    r = replay(model, length, args.reps, args.chunk, POLICIES[policy], args.warmup,
                               tier_factory(tier, args.slice_mib, args.bank_mib), not args.no_freeze_heap,
                               args.page_size)
                    r["shape"], r["policy"], r["tier"], r["page_size"] = shape, policy, tier, args.page_size
                    results.append(r)
        del model
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev.device_kind, "jax": jax.__version__, "copies_gbps": bw,
                       "rows": results}, f, indent=1)
    print("\n| shape | host tier | offload policy | page | document tokens | TTFT cold | warm on GPU |"
          " warm from host | cold / host | host work before the load (launch) | KV loaded |"
          " page copies of the step, synchronised (in and out) |"
          " of which tier load | device write | write GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['tier']} | {r['policy']} | {r['page_size']} | {r['length']} | "
              f"{r['cold'] * 1e3:.1f} ms | "
              f"{r['warm_gpu'] * 1e3:.1f} ms | "
              f"{r['warm_host'] * 1e3:.1f} ms | {r['speedup_host']:.1f}x | "
              f"{r['host_before_load'] * 1e3:.1f} ms "
              f"({r['load_launch'] * 1e3:.1f} ms) | "
              f"{r['loaded_bytes'] / 1e9:.2f} GB | {r['copies'] * 1e3:.1f} ms | {r['load'] * 1e3:.1f} ms | "
              f"{r['write'] * 1e3:.1f} ms | {r['write_gbps']:.1f} |")


if __name__ == "__main__":
    main()
