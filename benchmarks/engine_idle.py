"""GPU idle time between the engine's decode steps, read from a JAX profiler trace: a
random-weight Llama-3.2-1B-shaped model (bf16) at ``--batch`` decoding sequences, for each
``--decode-steps`` setting in turn.

    python benchmarks/engine_idle.py [--batch 256] [--decode-steps 1 8] [--decode-tokens 48]

Each setting warms up (compiles every step shape of the run), queues the batch again, runs until
every sequence decodes, then traces ``--decode-tokens`` decode steps of the engine's own loop
(``Engine.step``, planning ahead). From the trace's GPU plane: the launches (the "XLA Modules"
line: one event per executable run) and the kernels (the stream lines). Reported per decode
step: the span from the first launch's start to the last one's end, the gaps between consecutive
launches (the device waiting for the host), and the time no kernel runs (launch gaps plus the
gaps between kernels inside a launch).
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import kvlab
from kvlab.models import LlamaModel, ModelConfig


def union_ns(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of ``(start, end)`` intervals.

    >>> union_ns([(0, 10), (5, 12), (20, 25)])
    17
    """
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def gaps_ns(spans: list[tuple[int, int]]) -> int:
    """Time between consecutive ``(start, end)`` spans (overlaps count 0).

    >>> gaps_ns([(0, 10), (12, 20), (19, 30)])
    2
    """
    spans = sorted(spans)
    return sum(max(0, b[0] - a[1]) for a, b in zip(spans, spans[1:]))


def gpu_timeline(trace_dir: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(launch spans, kernel spans) in ns from the trace's first GPU plane: launches from its
    "XLA Modules" line (empty if it has none), kernels from its stream lines. Raises, naming the
    planes and lines it saw, when there are no kernels."""
    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    launches, kernels, seen = [], [], []
    for plane in data.planes:
        seen.append(f"{plane.name}: {[line.name for line in plane.lines]}")
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            spans = [(ev.start_ns, ev.end_ns) for ev in line.events]
            if line.name == "XLA Modules":
                launches += spans
            elif "stream" in line.name.lower():
                kernels += spans
        if kernels:
            break
    if not kernels:
        raise RuntimeError(f"no GPU kernels in the trace at {path}; planes and lines: "
                           + "; ".join(seen)[:2000])
    return launches, kernels


def device_only_tracing() -> jax.profiler.ProfileOptions:
    """Profiler options that record the device and leave the host untraced: JAX's default traces
    every Python call, which slowed a batch-256 engine step from 2.6 ms to 5.4-12.4 ms on the
    H200 (2026-12-02) and made the idle share measure the profiler."""
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    options.host_tracer_level = 0
    return options


def trace_decode(engine, prompts, params, decode_tokens: int) -> dict:
    """Queue ``prompts`` on a warmed-up ``engine``, run until every one decodes, then trace
    ``decode_tokens`` decode steps of its loop; the figures of the module docstring."""
    for p in prompts:
        engine.add_request(p, params)
    first = engine.executor.steps
    while engine.scheduler.waiting or engine.executor.steps < first + 4:
        engine.step()
    decode_steps = engine.scheduler.decode_steps
    launches = -(-decode_tokens // decode_steps)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, profiler_options=device_only_tracing()):
            for _ in range(launches):
                engine.step()
            jax.block_until_ready(engine.storage)
        spans, kernels = gpu_timeline(d)
    timed = spans or kernels                     # no launch line: the kernels' own extent
    start, end = min(s for s, _ in timed), max(e for _, e in timed)
    span = end - start
    busy = union_ns([(max(s, start), min(e, end)) for s, e in kernels if e > start and s < end])
    return {"launches": len(spans), "traced_step_ms": span / (launches * decode_steps) / 1e6,
            "between_launches_pct": 100 * gaps_ns(spans) / span if spans else float("nan"),
            "no_kernel_pct": 100 * (span - busy) / span}


def measure(model, batch: int, decode_steps: int, decode_tokens: int, prompt_len: int) -> dict:
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model.config.vocab_size, prompt_len).tolist() for _ in range(batch)]
    max_tokens = 4 * decode_tokens + 64
    cache = kvlab.PagedKVCache.for_tokens(batch * (prompt_len + max_tokens + 32), page_size=16)
    engine = kvlab.Engine(model, cache=cache, max_model_len=prompt_len + max_tokens + 32,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=batch, max_num_batched_tokens=8192,
                                                              decode_steps=decode_steps))
    params = kvlab.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    engine.generate(prompts, params)                      # compiles every shape of the run
    return {"batch": batch, "decode_steps": decode_steps,
            **trace_decode(engine, prompts, params, decode_tokens)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--decode-steps", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--decode-tokens", type=int, default=48)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--shape", choices=["llama-3.2-1b", "tiny"], default="llama-3.2-1b")
    args = ap.parse_args(argv)
    config = ModelConfig.tiny() if args.shape == "tiny" else ModelConfig.llama_3_2_1b()
    model = LlamaModel(config, dtype=jnp.bfloat16, seed=0)
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}, {args.shape} shape, bf16", flush=True)
    rows = [measure(model, args.batch, k, args.decode_tokens, args.prompt_len) for k in args.decode_steps]
    print("\n| batch | decode steps a launch | launches traced | time per decode step (ms) | "
          "device idle between launches | no kernel running |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['decode_steps']} | {r['launches']} | {r['traced_step_ms']:.3f} | "
              f"{r['between_launches_pct']:.1f}% | {r['no_kernel_pct']:.1f}% |")


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    main()
