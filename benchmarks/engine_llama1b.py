"""Decode throughput of a random-weight Llama-3.2-1B-shaped model (bf16) through kvlab's engine on
the GPU, with the Pallas kernels and, where it fits, the jnp reference attention in the same run;
each decode step is compared with its roofline (weight bytes + KV bytes read per step, over the
copy bandwidth measured in the same run), both as the engine's inter-token latency (host scheduling
included) and as the model's step alone on the device.

    python benchmarks/engine_llama1b.py [--batches 1 32 256] [--prompt-len 256] [--max-tokens 256]
                                        [--steps-ahead 0 1] [--shape llama-3-8b]

``--shape llama-3-8b`` runs the Llama-3-8B shape instead (random bf16 weights, 16 GB).

``--steps-ahead 0 1`` runs the engine's serial loop beside the one that plans a step while the
previous one runs (the default, 1), in the same run.

``--decode-steps 1 8`` runs one decode step a launch beside multi-step decoding (8 steps a launch
when only decodes run: ``kvlab.schedulers.multi_step``), in the same run.

``--trace-idle N`` also traces N decode steps of each engine run after its timed run
(``engine_idle.trace_decode``): the GPU's idle time between launches and with no kernel running.

``--gemms xla cublas-from-128`` runs each choice of XLA compiler options per step shape
(``kvlab.engine.xla_options``: XLA's defaults, or cuBLAS matmuls for steps of 128 tokens or more;
``default`` is the engine's default, the second on a GPU; ``cublas-from-128+graphs`` the second with
the kernel launches of every kind recorded into CUDA graphs, ``CommandBuffers``), in the same run.

``--kv-formats plain fp8 int8 int4 kivi2 kivi4`` runs each KV format in turn (the roofline counts
each one's KV bytes; KIVI on pages of 32 tokens, its key groups, with 1024 staging pages), and
reports the largest batch whose KV fits ``--kv-budget-gb`` at the decode phase's final context
for each.

Prompts are random token ids (the weights are random too, so text would mean nothing); every
request decodes exactly ``--max-tokens`` tokens (``ignore_eos``). A warm-up pass of the same shapes
compiles every step first. The engine step is the median time per decode step as the requests
see it: each gap between a request's token deliveries over the tokens delivered (the inter-token
latency, with a multi-step launch's tokens, which arrive together, sharing their gap); decode
tokens/s = batch size / that. Beside it: the median TPOT (last token's time less the first's,
over the tokens between, so it includes the decode steps slowed by other requests' prefills)
and the plain median inter-token latency (0 inside a multi-step launch).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from engine_idle import trace_decode  # beside this script
from flax import nnx

import kvlab
from kvlab.engine.defaults import kv_bytes_per_token
from kvlab.engine.xla_options import CommandBuffers, CublasGemmsFrom, XlaDefaults, default_xla_options
from kvlab.kvcache.formats import PLAIN, Fp8E4M3, Int4, Int8, Kivi, StaticScales
from kvlab.models import LlamaModel, ModelConfig
from kvlab.schedulers.shapes import next_pow2

SHAPES = {"llama-3.2-1b": ModelConfig.llama_3_2_1b, "llama-3-8b": ModelConfig.llama_3_8b,
          "tiny": ModelConfig.tiny}
GEMMS = {"default": default_xla_options, "xla": XlaDefaults,
         "cublas-from-128": lambda: CublasGemmsFrom(tokens=128),
         "cublas-from-128+graphs": lambda: CommandBuffers(inner=CublasGemmsFrom(tokens=128))}
# (format, page size): random weights, so fp8 gets static scales sized for the random K/V (|x| up
# to about 4-8); KIVI's pages are its key groups, and its staging pool holds a batch's last pages
KV_FORMATS = {"plain": (PLAIN, 16), "fp8": (Fp8E4M3(scales=StaticScales(k=0.02, v=0.02)), 16),
              "int8": (Int8(), 16), "int4": (Int4(), 16),
              "kivi2": (Kivi(bits=2, group_size=32, staging_pages=1024), 32),
              "kivi4": (Kivi(bits=4, group_size=32, staging_pages=1024), 32)}


def copy_bandwidth() -> float:
    x = jnp.ones((512 * 1024 * 1024,), jnp.bfloat16)
    f = jax.jit(lambda a: a * 1.0009765625)
    jax.block_until_ready(f(x))
    t = time.perf_counter()
    for _ in range(10):
        y = f(x)
    jax.block_until_ready(y)
    return 2 * x.nbytes * 10 / (time.perf_counter() - t)


def run(model, attention, batch: int, prompt_len: int, max_tokens: int, page_size: int = 16,
        steps_ahead: int = 1, kv_format=PLAIN, decode_steps: int = 1, trace_idle: int = 0,
        gemms: str = "default") -> dict:
    rng = np.random.default_rng(batch)
    prompts = [rng.integers(0, model.config.vocab_size, prompt_len).tolist() for _ in range(batch)]
    tokens = batch * (prompt_len + max_tokens)
    cache = kvlab.PagedKVCache.for_tokens(tokens + 64 * page_size, page_size=page_size, kv_format=kv_format)
    engine = kvlab.Engine(model, cache=cache,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=batch,
                                                              max_num_batched_tokens=4096,
                                                              decode_steps=decode_steps),
                          attention=attention, max_model_len=prompt_len + max_tokens + page_size,
                          steps_ahead=steps_ahead, xla_options=GEMMS[gemms]())
    params = kvlab.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    engine.generate(prompts, params)                                        # warm-up: compiles
    compiles = engine.num_compilations
    print(f"batch {batch}, {decode_steps} decode steps a plan: warm-up {time.perf_counter() - t0:.1f} s, "
          f"{compiles} step shapes compiled", flush=True)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    wall = time.perf_counter() - t0
    m = engine.metrics(outs, wall)
    idle = {}
    if trace_idle:
        try:
            idle = trace_decode(engine, prompts, params, trace_idle)
        except Exception as e:  # noqa: BLE001 - the trace is extra: report it, keep the timed row
            print(f"tracing failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
    step = np.median([gap for c in outs for gap in delivery_gaps(c.request.token_times)])
    return {"attention": attention.name, "kv_format": kv_format.name, "batch": batch,
            "steps_ahead": steps_ahead, "decode_steps": decode_steps, "gemms": gemms,
            "decode_tok_per_s": batch / step, "decode_step_ms": 1e3 * step,
            "tpot_p50_ms": 1e3 * m["tpot_p50_s"], "itl_p50_ms": 1e3 * m["itl_p50_s"],
            "output_tok_per_s": m["output_tokens_per_s"], "wall_s": wall,
            "compilations_in_timed_run": engine.num_compilations - compiles, **idle}


def delivery_gaps(token_times: list[float]) -> list[float]:
    """Per token after the first delivery: the gap since the previous delivery over the tokens
    delivered together (a multi-step launch's tokens share one time stamp).

    >>> delivery_gaps([0.0, 1.0, 1.0, 1.0, 4.0])
    [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 3.0]
    """
    times, counts = np.unique(np.asarray(token_times), return_counts=True)
    return [float(g) for gap, n in zip(np.diff(times), counts[1:]) for g in [gap / n] * n]


def device_step_ms(model, attention, batch: int, ctx: int, page_size: int = 16, reps: int = 20,
                   kv_format=PLAIN, gemms: str = "default") -> float:
    """The model's decode step alone (no host scheduling): ``batch`` sequences at ``ctx`` tokens,
    random KV (plain; zero pages for a quantized format: the same work; KIVI's all sealed) in
    randomly ordered pages, storage donated; median of back-to-back steps."""
    from kvlab.attention import RaggedBatch
    from kvlab.kvcache.storage import PagedKVStorage

    c = model.config
    per_seq = -(-ctx // page_size)
    perm = np.random.default_rng(0).permutation(batch * per_seq) + 1
    pages = [perm[i * per_seq:(i + 1) * per_seq].tolist() for i in range(batch)]
    rb = jax.device_put(RaggedBatch.build(q_tokens=[[7]] * batch, q_starts=[ctx - 1] * batch,
                                          page_lists=pages,
                                          page_size=page_size, token_bucket=max(16, batch), seq_bucket=batch,
                                          page_bucket=per_seq))
    shape = (c.num_layers, batch * per_seq + 1, page_size, c.num_kv_heads, c.head_dim)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    if kv_format == PLAIN:
        storage = PagedKVStorage(k=jax.random.normal(keys[0], shape, jnp.bfloat16),
                                 v=jax.random.normal(keys[1], shape, jnp.bfloat16))
    else:
        writes = kv_format.page_writes(num_pages=shape[1], page_size=page_size)
        storage = writes.storage(kv_format, num_layers=shape[0], num_pages=shape[1], page_size=page_size,
                                 num_kv_heads=shape[3], head_dim=shape[4], dtype=jnp.bfloat16)
    storage = model.place_kv(storage)              # split over the devices of a tensor-parallel model
    graphdef, weights = nnx.split(model)           # weights as arguments, as the engine's step has them
    options = dict(GEMMS[gemms]().for_tokens(next_pow2(batch, 16))) or None   # the engine's padding
    jitted = jax.jit(lambda w, st, b: nnx.merge(graphdef, w)(b, st, attention)[::-1], donate_argnums=1,
                     compiler_options=options)

    def step(st, b):
        return jitted(weights, st, b)
    storage = step(storage, rb)[0]
    times = []
    for _ in range(3):
        jax.block_until_ready(storage)
        t = time.perf_counter()
        for _ in range(reps):
            storage, _logits = step(storage, rb)
        jax.block_until_ready(storage)
        times.append((time.perf_counter() - t) / reps)
    return 1e3 * float(np.median(times))


def roofline_ms(config: ModelConfig, batch: int, prompt_len: int, max_tokens: int, bw: float,
                kv_format=PLAIN) -> float:
    """Bytes a decode step must read at the mean context of the decode phase, over ``bw``."""
    weights = config.num_params() * 2
    ctx = prompt_len + max_tokens / 2
    kv = batch * ctx * kv_bytes_per_token(config, jnp.bfloat16, kv_format)
    return 1e3 * (weights + kv) / bw


def run_batch(model, config, b: int, fmt, page: int, args, bw: float) -> list[dict]:
    """Every backend and steps-ahead setting at batch ``b`` with KV format ``fmt`` on pages of
    ``page`` tokens."""
    rows = []
    backends = [kvlab.PallasAttention()]
    if b <= args.reference_up_to:
        backends.append(kvlab.ReferenceAttention())
    for be, gemms in [(be, g) for be in backends for g in args.gemms]:
        device_ms = None
        for ahead, k in [(a, k) for a in args.steps_ahead for k in args.decode_steps]:
            try:
                r = run(model, be, b, args.prompt_len, args.max_tokens, page_size=page, steps_ahead=ahead,
                        kv_format=fmt, decode_steps=k, trace_idle=args.trace_idle, gemms=gemms)
            except Exception as e:  # noqa: BLE001 - e.g. the reference out of memory: report, go on
                print(f"{be.name} at batch {b} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            r["roofline_step_ms"] = roofline_ms(config, b, args.prompt_len, args.max_tokens, bw, fmt)
            if device_ms is None:
                ctx = args.prompt_len + args.max_tokens // 2
                device_ms = device_step_ms(model, be, b, ctx, page_size=page, kv_format=fmt, gemms=gemms)
            r["device_step_ms"] = device_ms
            rows.append(r)
            print(r, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--reference-up-to", type=int, default=32,
                    help="largest batch also run with the reference attention (it gathers all pages "
                         "per query row, so memory grows with batch x context)")
    ap.add_argument("--steps-ahead", type=int, nargs="+", default=[1],
                    help="engine loops to run: 1 plans a step while the previous one runs, 0 is serial")
    ap.add_argument("--decode-steps", type=int, nargs="+", default=[1],
                    help="decode steps a launch runs when only decodes run (1: one a launch)")
    ap.add_argument("--trace-idle", type=int, default=0,
                    help="decode steps to trace after each timed run for the GPU's idle time (0: none)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--gemms", nargs="+", choices=sorted(GEMMS), default=["default"],
                    help="XLA compiler options per step shape (kvlab.engine.xla_options)")
    ap.add_argument("--kv-formats", nargs="+", choices=sorted(KV_FORMATS), default=["plain"])
    ap.add_argument("--kv-budget-gb", type=float, default=40.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = jax.devices()[0]
    config = SHAPES[args.shape]()
    model = LlamaModel(config, dtype=jnp.bfloat16, seed=0)
    bw = copy_bandwidth()
    print(f"{dev.device_kind}, JAX {jax.__version__}, {args.shape} shape (random bf16 weights, "
          f"{config.num_params() / 1e9:.2f}B params), copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    for name in args.kv_formats:
        fmt, page = KV_FORMATS[name]
        per_seq = (args.prompt_len + args.max_tokens) * kv_bytes_per_token(config, jnp.bfloat16, fmt)
        print(f"{fmt.name}: {int(args.kv_budget_gb * 1e9 // per_seq)} sequences of "
              f"{args.prompt_len + args.max_tokens} tokens fit {args.kv_budget_gb:g} GB of KV", flush=True)
        for b in args.batches:
            rows += run_batch(model, config, b, fmt, page, args, bw)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev.device_kind, "jax": jax.__version__, "copy_TBps": bw / 1e12,
                       "shape": args.shape,
                       "rows": rows},
                      f, indent=1)
    print("\n| attention | GEMMs | KV format | batch | steps ahead | decode steps | decode tok/s |"
          " engine step (ms) | TPOT P50 (ms) | model step on device (ms) | roofline (ms) |"
          " engine / roofline | device / roofline | output tok/s (incl. prefill) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attention']} | {r['gemms']} | {r['kv_format']} | {r['batch']} | {r['steps_ahead']} | "
              f"{r['decode_steps']} | "
              f"{r['decode_tok_per_s']:.0f} | "
              f"{r['decode_step_ms']:.2f} | {r['tpot_p50_ms']:.2f} | "
              f"{r['device_step_ms']:.2f} | {r['roofline_step_ms']:.2f} | "
              f"{r['decode_step_ms'] / r['roofline_step_ms']:.2f} | "
              f"{r['device_step_ms'] / r['roofline_step_ms']:.2f} | {r['output_tok_per_s']:.0f} |")
    for r in rows:
        if "traced_step_ms" in r:
            print(f"traced: batch {r['batch']}, {r['gemms']} GEMMs, {r['decode_steps']} decode steps "
                  f"a launch: {r['traced_step_ms']:.3f} ms a step, idle between launches "
                  f"{r['between_launches_pct']:.1f}%, no kernel running {r['no_kernel_pct']:.1f}%")


if __name__ == "__main__":
    main()
