"""Weight offload (ZeRO-Inference, ``StreamedLayers``) on the GPU: a Llama-3-8B-shaped model (random
bf16 weights, 16 GB) under a device budget too small for its weights, every streamed layer copied
from pinned host memory each step. Each decode step is compared with its transfer roofline: the
streamed weight bytes over the host-to-device bandwidth measured in the same run. The same model
with every layer on the device is the peer (its step is the compute the copies could hide behind).

    python benchmarks/weight_offload.py [--budgets-gb 4 0] [--batches 1 64 256 1024]
                                        [--prefetch 0 1] [--host-formats same int8 int4]
                                        [--engine-batch 256] [--json F]

A budget of 0 means full offload (no resident layer); any other budget gets as many resident
layers as ``StreamedLayers.for_budget`` finds room for. The decode step is the model's step alone on
the device at a 256-token context (``engine_llama1b.device_step_ms``); ``--engine-batch`` also runs
the engine end to end (128-token prompts, 16 new tokens) for the full-offload and resident models.
``--host-formats`` keeps the streamed layers as they are (``same``) or as int8 / int4 codes
(``kvlab.models.host_formats``); the roofline counts the bytes each format moves.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from engine_llama1b import device_step_ms, run
from flax import nnx
from jax.sharding import SingleDeviceSharding

import kvlab
from kvlab.models import (
    Int4Groups,
    Int8Channels,
    LlamaModel,
    ModelConfig,
    SameDtype,
    StreamedLayers,
    UnrolledLayers,
)
from kvlab.models.streamed_layers import layer_bytes, streamed_layer_bytes

GB = 1e9


HOST_FORMATS = {"same": SameDtype(), "int8": Int8Channels(), "int4": Int4Groups()}


def host_to_device_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of one jitted copy of a pinned host array to the device (median of 5)."""
    dev = jax.devices()[0]
    pinned = SingleDeviceSharding(dev, memory_kind="pinned_host")
    host = jax.device_put(np.ones(nbytes // 2, jnp.bfloat16), pinned)
    copy = jax.jit(lambda a: jax.device_put(a, SingleDeviceSharding(dev)))
    jax.block_until_ready(copy(host))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(copy(host))
        times.append(time.perf_counter() - t)
    return nbytes / float(np.median(times))


def build(config: ModelConfig, loop) -> LlamaModel:
    """The model, its copies to host memory done and the device arrays it was made from freed."""
    gc.collect()
    model = LlamaModel(config, dtype=jnp.bfloat16, seed=0, layer_loop=loop)
    jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
    gc.collect()
    return model


def loops(config: ModelConfig, args) -> list[tuple[str, object, int, str, object]]:
    """(label, layer loop, resident layers, prefetch, host format) for every budget, prefetch and
    host format setting, the resident model first."""
    out = [] if args.skip_peer else [("all on device", UnrolledLayers(), config.num_layers, "-", SameDtype())]
    for gb, p, name in itertools.product(args.budgets_gb, args.prefetch, args.host_formats):
        fmt = HOST_FORMATS[name]
        loop = (StreamedLayers(num_resident=0, prefetch=p, host_format=fmt) if gb == 0 else
                StreamedLayers.for_budget(config, device_bytes=int(gb * GB), dtype=jnp.bfloat16,
                                          prefetch=p, host_format=fmt))
        label = f"{gb:g} GB budget" if gb else "full offload"
        label += "" if name == "same" else f", {name} on host"
        out.append((label, loop, loop.num_resident, str(p), fmt))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets-gb", type=float, nargs="+", default=[4.0, 0.0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256, 1024])
    ap.add_argument("--prefetch", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--host-formats", nargs="+", choices=sorted(HOST_FORMATS), default=["same"],
                    help="how the streamed layers are kept in host memory (int8/int4: fewer bytes moved)")
    ap.add_argument("--engine-batch", type=int, default=256, help="0: no engine run")
    ap.add_argument("--skip-peer", action="store_true", help="do not run the all-on-device model")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    config = ModelConfig.llama_3_8b()
    per_layer, other = layer_bytes(config, jnp.bfloat16)
    h2d = host_to_device_bandwidth()
    dev = jax.devices()[0]
    print(f"{dev.device_kind}, JAX {jax.__version__}, Llama-3-8B shape, {per_layer / GB:.3f} GB per layer, "
          f"{other / GB:.2f} GB outside the layers; host-to-device {h2d / GB:.1f} GB/s (pinned)", flush=True)
    rows, resident_ms = [], {}
    attention = kvlab.PallasAttention()
    for label, loop, resident, prefetch, fmt in loops(config, args):
        model = build(config, loop)
        on_device = (dev.memory_stats() or {}).get("bytes_in_use", 0)
        moved, _ = streamed_layer_bytes(config, jnp.bfloat16, fmt)
        streamed_bytes = (config.num_layers - resident) * moved
        for b in args.batches:
            ms = device_step_ms(model, attention, b, 256, reps=5)
            if resident == config.num_layers:
                resident_ms[b] = ms
            transfer_ms = 1e3 * streamed_bytes / h2d
            row = {"model": label, "resident_layers": resident, "prefetch": prefetch, "batch": b,
                   "device_GB": on_device / GB, "streamed_GB": streamed_bytes / GB, "step_ms": ms,
                   "transfer_roofline_ms": transfer_ms, "tok_per_s": 1e3 * b / ms,
                   "resident_step_ms": resident_ms.get(b)}
            rows.append(row)
            print(row, flush=True)
        if args.engine_batch and resident in (0, config.num_layers) and prefetch in ("-", "0"):
            r = run(model, attention, args.engine_batch, 128, 16)
            r.update(model=label, engine=True)
            rows.append(r)
            print(r, flush=True)
        del model
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev.device_kind, "jax": jax.__version__, "h2d_GBps": h2d / GB, "rows": rows},
                      f, indent=1)
    print("\n| model | resident layers | prefetch | batch | device GB | streamed GB | step (ms) |"
          " transfer roofline (ms) | step / roofline | all-on-device step (ms) | tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("engine"):
            continue
        ratio = r["step_ms"] / r["transfer_roofline_ms"] if r["transfer_roofline_ms"] else float("nan")
        peer = r["resident_step_ms"] or float("nan")
        print(f"| {r['model']} | {r['resident_layers']} | {r['prefetch']} | {r['batch']} | "
              f"{r['device_GB']:.1f} | {r['streamed_GB']:.1f} | {r['step_ms']:.1f} | "
              f"{r['transfer_roofline_ms']:.1f} | {ratio:.2f} | {peer:.1f} | "
              f"{r['tok_per_s']:.0f} |")
    for r in rows:
        if r.get("engine"):
            print(f"engine, {r['model']}, batch {r['batch']}: decode step {r['decode_step_ms']:.1f} ms, "
                  f"{r['decode_tok_per_s']:.0f} decode tok/s, {r['output_tok_per_s']:.0f} output tok/s")


if __name__ == "__main__":
    main()
