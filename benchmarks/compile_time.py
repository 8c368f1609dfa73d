"""Where a step's compilation goes: the model's step (random bf16 weights) traced, lowered and
compiled as separate stages (``jax.jit(...).trace(...).lower().compile()``) for a prefill and a
decode shape, per attention backend and per set of XLA compiler options; with the number of
kernel custom calls in the lowered module (Triton and Mosaic GPU) and how many of them differ.

    python benchmarks/compile_time.py [--shape llama-3.2-1b] [--prefill 16x256] [--decode 256@384 1@384]
                                      [--prefill-kernels auto triton] [--xla default cublas autotune0]
                                      [--interpret]

``auto`` is ``PallasAttention()`` (the Hopper prefill on a Hopper GPU), ``triton`` forces the
Triton prefill kernel (``PrefillConfig()``). XLA option sets: ``default`` (none), ``cublas``
(``xla_gpu_enable_triton_gemm=False``), ``autotune0`` (``xla_gpu_autotune_level=0``: no GEMM
autotuning). The step is compiled afresh each time (JAX's caches are cleared between rows).
"""

from __future__ import annotations

import argparse
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

import kvlab
from kvlab.attention import RaggedBatch
from kvlab.attention.pallas.prefill import PrefillConfig
from kvlab.kvcache.storage import PagedKVStorage
from kvlab.models import LlamaModel, ModelConfig

SHAPES = {"llama-3.2-1b": ModelConfig.llama_3_2_1b, "llama-3-8b": ModelConfig.llama_3_8b,
          "tiny": ModelConfig.tiny}
PREFILL = {"auto": lambda interpret: kvlab.PallasAttention(interpret=interpret),
           "triton": lambda interpret: kvlab.PallasAttention(prefill=PrefillConfig(), interpret=interpret)}
XLA = {"default": {}, "cublas": {"xla_gpu_enable_triton_gemm": False},
       "autotune0": {"xla_gpu_autotune_level": 0}}
KERNEL_CALLS = {"triton": "custom_call @__gpu$xla.gpu.triton", "mosaic": "custom_call @mosaic_gpu"}


def step_batch(kind: str, spec: str, page_size: int) -> tuple[RaggedBatch, int]:
    """``prefill`` ``BxS`` (B prompts of S tokens) or ``decode`` ``B@C`` (B sequences at context
    C): the batch and the pages it needs."""
    if kind == "prefill":
        b, s = (int(x) for x in spec.split("x"))
        q_tokens, starts, ctx = [[7] * s] * b, [0] * b, s
    else:
        b, ctx = (int(x) for x in spec.split("@"))
        q_tokens, starts = [[7]] * b, [ctx - 1] * b
    per_seq = -(-ctx // page_size)
    pages = [list(range(1 + i * per_seq, 1 + (i + 1) * per_seq)) for i in range(b)]
    tokens = sum(len(q) for q in q_tokens)
    batch = RaggedBatch.build(q_tokens=q_tokens, q_starts=starts, page_lists=pages, page_size=page_size,
                              token_bucket=max(16, tokens), seq_bucket=b, page_bucket=per_seq)
    return batch, b * per_seq + 1


def kernel_calls(text: str) -> dict:
    """Per kind of kernel custom call in a lowered module: how many sites, and how many differ
    (a site inside a function that several layers call counts once)."""
    out = {}
    for name, target in KERNEL_CALLS.items():
        calls = [re.sub(r"%[\w.#:]+", "%", line) for line in text.splitlines() if target in line]
        out[name] = (len(calls), len(set(calls)))    # operand names aside
    return out


def model_step(model, attention, kind: str, spec: str, options: dict, page_size: int = 16):
    """The model's step jitted as the engine has it (weights as arguments, the KV storage
    donated; it returns (storage, logits)) for the ``step_batch`` of ``kind`` and ``spec``, and
    its arguments (weights, zero KV storage, batch)."""
    c = model.config
    batch, num_pages = step_batch(kind, spec, page_size)
    shape = (c.num_layers, num_pages, page_size, c.num_kv_heads, c.head_dim)
    storage = PagedKVStorage(k=jnp.zeros(shape, model.dtype), v=jnp.zeros(shape, model.dtype))
    graphdef, weights = nnx.split(model)
    jitted = jax.jit(lambda w, s, b: nnx.merge(graphdef, w)(b, s, attention)[::-1], donate_argnums=1,
                     compiler_options=options or None)
    return jitted, (weights, storage, jax.device_put(batch))


def time_stages(model, attention, kind: str, spec: str, options: dict) -> dict:
    jitted, args = model_step(model, attention, kind, spec, options)
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    t4 = time.perf_counter()
    calls = kernel_calls(lowered.as_text())
    return {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2, "first_run_s": t4 - t3, **calls}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--prefill", nargs="*", default=["16x256"])
    ap.add_argument("--decode", nargs="*", default=["256@384", "1@384"])
    ap.add_argument("--prefill-kernels", nargs="+", choices=sorted(PREFILL), default=["auto", "triton"])
    ap.add_argument("--xla", nargs="+", choices=sorted(XLA), default=["default", "cublas"])
    ap.add_argument("--interpret", action="store_true", help="the kernels in interpret mode (any device)")
    args = ap.parse_args(argv)
    config = SHAPES[args.shape]()
    model = LlamaModel(config, dtype=jnp.bfloat16, seed=0)
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}, {args.shape} shape", flush=True)
    rows = []
    cases = [("prefill", s, p) for s in args.prefill for p in args.prefill_kernels]
    cases += [("decode", s, "auto") for s in args.decode]
    for (kind, spec, prefill), xla in [(c, x) for c in cases for x in args.xla]:
        jax.clear_caches()
        try:
            r = time_stages(model, PREFILL[prefill](args.interpret), kind, spec, XLA[xla])
        except Exception as e:  # noqa: BLE001 - report the row's failure, go on with the others
            print(f"{kind} {spec} {prefill} {xla} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        r.update(kind=kind, spec=spec, prefill=prefill, xla=xla)
        rows.append(r)
        print(r, flush=True)
    print("\n| step | prefill kernel | XLA options | trace (s) | lower (s) | compile (s) | first run (s) |"
          " Triton call sites (distinct) | Mosaic GPU call sites (distinct) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} {r['spec']} | {r['prefill']} | {r['xla']} | {r['trace_s']:.1f} | "
              f"{r['lower_s']:.1f} | {r['compile_s']:.1f} | {r['first_run_s']:.1f} | "
              f"{r['triton'][0]} ({r['triton'][1]}) | "
              f"{r['mosaic'][0]} ({r['mosaic'][1]}) |")
    return rows


if __name__ == "__main__":
    main()
