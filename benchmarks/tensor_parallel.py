"""Tensor parallelism on the GPUs of one host (the lent ``nvidia-h200-x2``): the Llama-3-8B shape
(random bf16 weights) at TP 1 and 2, each decode step against its own roofline (its share of the
weight and KV bytes over the copy bandwidth measured in the same run), the share of the step the
all-reduces take (two per layer, timed alone at the step's shape), and output tokens/s of the
engine on a ShareGPT-like workload; then the same workload over data-parallel replicas (one per
GPU, behind a least-loaded ``Router``) against one replica.

    python benchmarks/tensor_parallel.py [--degrees 1 2] [--batches 1 64] [--requests 1000]
                                         [--replicas 2] [--shape llama-3-8b] [--json F]

The decode step is the model's step alone on the devices at a 512-token context
(``engine_llama1b.device_step_ms``). Speed-up = TP 1 step / TP n step. Random weights are made
on the devices (``TensorParallel.random``); a degree whose share does not fit is reported with
its arithmetic (``--shape llama-3-70b``: 141 GB of bf16 weights).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from engine_llama1b import SHAPES, copy_bandwidth, device_step_ms
from jax.sharding import PartitionSpec as P

import kvlab
from kvlab.engine.defaults import kv_bytes_per_token
from kvlab.models import ModelConfig
from kvlab.parallel import LeastLoaded, Router, TensorParallel
from kvlab.workloads import sharegpt_like

CONTEXT = 512
ALL_SHAPES = {**SHAPES, "llama-3-70b": ModelConfig.llama_3_70b}


def all_reduce_ms(mesh, batch: int, hidden: int, count: int) -> float:
    """``count`` all-reduces of a ``[batch, hidden]`` bf16 array over the mesh, one after another."""
    def reduce_all(x):
        for _ in range(count):
            x = jax.lax.psum(x, "tp") * 0.5
        return x
    f = jax.jit(jax.shard_map(reduce_all, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False))
    x = jnp.ones((batch, hidden), jnp.bfloat16)
    jax.block_until_ready(f(x))
    t = time.perf_counter()
    for _ in range(10):
        x = f(x)
    jax.block_until_ready(x)
    return 1e3 * (time.perf_counter() - t) / 10


def serving_engine(model):
    scheduler = kvlab.ChunkedScheduler(max_num_seqs=256, max_num_batched_tokens=4096)
    return kvlab.Engine(model, scheduler=scheduler, max_model_len=2048)


def sharegpt_tok_per_s(server, n: int, vocab: int) -> dict:
    """Output tokens/s of ``server`` (an engine or a router) on ``n`` ShareGPT-like requests."""
    reqs = sharegpt_like(n, vocab_size=vocab)
    prompts = [r.prompt_token_ids for r in reqs]
    params = [kvlab.SamplingParams(max_tokens=r.max_tokens, ignore_eos=True) for r in reqs]
    server.generate(prompts[:128], params[:128])                             # compile the common shapes
    t = time.perf_counter()
    outs = server.generate(prompts, params)
    wall = time.perf_counter() - t
    return {"requests": n, "output_tokens": sum(len(o.token_ids) for o in outs), "wall_s": wall,
            "output_tok_per_s": sum(len(o.token_ids) for o in outs) / wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--degrees", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--requests", type=int, default=1000, help="ShareGPT-like requests (0: none)")
    ap.add_argument("--replicas", type=int, default=2, help="data-parallel replicas (1: none)")
    ap.add_argument("--shape", choices=sorted(ALL_SHAPES), default="llama-3-8b")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    config = ALL_SHAPES[args.shape]()
    bw = copy_bandwidth()
    print(f"{jax.devices()[0].device_kind} x {len(jax.devices())}, JAX {jax.__version__}, {args.shape}, "
          f"copy bandwidth {bw / 1e12:.2f} TB/s per device", flush=True)
    attention = kvlab.PallasAttention() if jax.default_backend() == "gpu" else kvlab.ReferenceAttention()
    rows, step1 = [], {}
    for n in args.degrees:
        mesh = jax.make_mesh((n,), ("tp",), devices=jax.devices()[:n])
        share = config.num_params() * 2 / n
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit", 0)
        print(f"TP {n}: {share / 1e9:.1f} GB of bf16 weights per device, device limit "
              f"{limit / 1e9:.1f} GB", flush=True)
        try:
            model = TensorParallel.random(config, mesh, dtype=jnp.bfloat16)
        except Exception as e:  # noqa: BLE001 - out of memory: the arithmetic above says why
            print(f"TP {n} does not fit: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        for b in args.batches:
            ms = device_step_ms(model, attention, b, CONTEXT)
            step1.setdefault(b, ms)
            kv = b * CONTEXT * kv_bytes_per_token(model.config, jnp.bfloat16)
            roof = 1e3 * (config.num_params() * 2 + kv) / n / bw
            ar = all_reduce_ms(mesh, b, config.hidden_size, 2 * config.num_layers) if n > 1 else 0.0
            rows.append({"tp": n, "batch": b, "step_ms": ms, "roofline_ms": roof, "all_reduce_ms": ar,
                         "speedup": step1[b] / ms, "tok_per_s": 1e3 * b / ms})
            print(rows[-1], flush=True)
        if args.requests:
            r = sharegpt_tok_per_s(serving_engine(model), args.requests, config.vocab_size)
            r["tp"] = n
            rows.append(r)
            print(r, flush=True)
        del model
    if args.requests and args.replicas > 1:
        engines = [serving_engine(TensorParallel.random(config, jax.make_mesh((1,), ("tp",), devices=[d]),
                                                        dtype=jnp.bfloat16))
                   for d in jax.devices()[:args.replicas]]
        r = sharegpt_tok_per_s(Router(engines, LeastLoaded()), args.requests, config.vocab_size)
        r["replicas"] = args.replicas
        rows.append(r)
        print(r, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "copy_TBps": bw / 1e12,
                       "shape": args.shape, "rows": rows}, f, indent=1)
    print("\n| TP | batch | decode step (ms) | roofline (ms) | step / roofline | all-reduces (ms, share) |"
          " speed-up over TP 1 | tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "batch" in r:
            print(f"| {r['tp']} | {r['batch']} | {r['step_ms']:.2f} | {r['roofline_ms']:.2f} | "
                  f"{r['step_ms'] / r['roofline_ms']:.2f} | {r['all_reduce_ms']:.2f} "
                  f"({r['all_reduce_ms'] / r['step_ms']:.0%}) | {r['speedup']:.2f}x | {r['tok_per_s']:.0f} |")
    for r in rows:
        if "requests" in r:
            who = f"{r['replicas']} replicas" if "replicas" in r else f"TP {r['tp']}"
            print(f"ShareGPT-like, {who}: {r['requests']} requests, {r['output_tok_per_s']:.0f} output tok/s")


if __name__ == "__main__":
    main()
