"""The host's dispatch of the model's step against the device's step: how long the jitted call
takes to return (the host's work to launch it) and the step's time in a back-to-back loop, for a
few choices of XLA command buffers (CUDA graphs), with random bf16 weights.

    python benchmarks/step_dispatch.py [--shape llama-3.2-1b] [--decode 1@384 256@384]
                                       [--graphs defaults off all] [--interpret]

``defaults``: XLA's own choice of what to record into command buffers; ``off``: none (the host
launches every kernel); ``all``: every kind of kernel launch a step makes
(``kvlab.engine.CommandBuffers()``, the Pallas kernels' custom calls among them). A decode
shape ``B@C`` is B sequences at context C. When the dispatch takes as long as the step, the host
is what the device waits for.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from compile_time import SHAPES, model_step  # beside this script

import kvlab
from kvlab.engine import CommandBuffers
from kvlab.models import LlamaModel

GRAPHS = {"defaults": {}, "off": dict(CommandBuffers(commands=()).for_tokens(1)),
          "all": dict(CommandBuffers().for_tokens(1))}


def measure(model, attention, spec: str, options: dict, rounds: int = 5, reps: int = 20) -> dict:
    """Median dispatch (the call's return) and step time (back to back) of the decode step."""
    step, (weights, storage, batch) = model_step(model, attention, "decode", spec, options)
    storage, _ = step(weights, storage, batch)
    dispatch, steps = [], []
    for _ in range(rounds):
        jax.block_until_ready(storage)
        start = time.perf_counter()
        for _ in range(reps):
            t = time.perf_counter()
            storage, _logits = step(weights, storage, batch)
            dispatch.append(time.perf_counter() - t)
        jax.block_until_ready(storage)
        steps.append((time.perf_counter() - start) / reps)
    return {"dispatch_ms": 1e3 * float(np.median(dispatch)),
            "dispatch_p90_ms": 1e3 * float(np.quantile(dispatch, 0.9)),
            "step_ms": 1e3 * float(np.median(steps))}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--decode", nargs="+", default=["1@384", "256@384"])
    ap.add_argument("--graphs", nargs="+", choices=sorted(GRAPHS), default=["defaults", "off", "all"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--interpret", action="store_true", help="the kernels in interpret mode (any device)")
    args = ap.parse_args(argv)
    model = LlamaModel(SHAPES[args.shape](), dtype=jnp.bfloat16, seed=0)
    attention = kvlab.PallasAttention(interpret=args.interpret)
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}, {args.shape} shape", flush=True)
    rows = []
    for spec, graphs in [(s, g) for s in args.decode for g in args.graphs]:
        r = {"decode": spec, "graphs": graphs, **measure(model, attention, spec, GRAPHS[graphs], args.rounds)}
        rows.append(r)
        print(r, flush=True)
    print("\n| decode | command buffers | dispatch (ms) | dispatch P90 (ms) | step (ms) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['decode']} | {r['graphs']} | {r['dispatch_ms']:.3f} | {r['dispatch_p90_ms']:.3f} | "
              f"{r['step_ms']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
