"""End-to-end generation throughput of the bundled SmolLM2 through kvlab's engine, with HF
transformers' ``generate`` on the same GGUF weights measured in the same run as the peer.

    python benchmarks/engine_throughput.py [--dtype bfloat16] [--batches 1 8 32] [--json out.json]

Each batch size runs the same chat prompts (cycled) with greedy decoding and ``ignore_eos`` so
every request generates exactly ``--max-tokens`` tokens; a warm-up pass of the same shapes is
excluded from the timing. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

import kvlab
from kvlab.cli import DEMO_PROMPTS


def kvlab_run(model, tok, batch: int, max_tokens: int, page_size: int):
    prompts = [tok.encode_chat(DEMO_PROMPTS[i % len(DEMO_PROMPTS)]) for i in range(batch)]
    tokens_needed = sum(len(p) + max_tokens for p in prompts)
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache.for_tokens(tokens_needed + 64 * page_size,
                                                                      page_size=page_size),
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=max(batch, 1),
                                                              max_num_batched_tokens=max(2048, batch)),
                          tokenizer=tok)
    params = kvlab.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    engine.generate(prompts, params)  # warm-up: compiles every shape the timed run uses
    steps0, warm_compiles = engine.runner.steps, engine.num_compilations
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    wall = time.perf_counter() - t0
    m = engine.metrics(outs, wall)
    return {"system": "kvlab", "batch": batch, "output_tokens": int(m["output_tokens"]), "wall_s": wall,
            "tok_per_s": m["output_tokens_per_s"], "ttft_ms": 1e3 * m["ttft_mean_s"],
            "itl_p50_ms": 1e3 * m.get("itl_p50_s", float("nan")), "steps": engine.runner.steps - steps0,
            "compilations_in_timed_run": int(m["compilations"]) - warm_compiles}


def hf_run(batch: int, max_tokens: int, dtype: str):
    import os

    import torch
    import transformers

    from kvlab.models import bundled

    path = bundled.locate()
    directory, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=getattr(torch, dtype)).to("cuda").eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": DEMO_PROMPTS[i % len(DEMO_PROMPTS)]}],
                                     add_generation_prompt=True, tokenize=False) for i in range(batch)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
    kwargs = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                  pad_token_id=tok.pad_token_id or 0)
    with torch.no_grad():
        model.generate(**enc, **kwargs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(**enc, **kwargs)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    n = (out.shape[1] - enc["input_ids"].shape[1]) * batch
    return {"system": "transformers generate", "batch": batch, "output_tokens": n, "wall_s": wall,
            "tok_per_s": n / wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--no-peer", action="store_true", help="skip the transformers peer")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = jax.devices()[0]
    print(f"device {dev.device_kind} ({jax.default_backend()}), JAX {jax.__version__}, dtype {args.dtype}")
    model, tok = kvlab.models.load("smollm2-135m", dtype=jnp.dtype(args.dtype))
    rows = []
    for b in args.batches:
        rows.append(kvlab_run(model, tok, b, args.max_tokens, args.page_size))
        print(rows[-1], flush=True)
        if not args.no_peer:
            rows.append(hf_run(b, args.max_tokens, args.dtype))
            print(rows[-1], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev.device_kind, "jax": jax.__version__, "dtype": args.dtype,
                       "rows": rows}, f, indent=1)
    print("\n| system | batch | output tokens | wall (s) | output tok/s | TTFT mean (ms) | ITL P50 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['batch']} | {r['output_tokens']} | {r['wall_s']:.2f} | "
              f"{r['tok_per_s']:.0f} | {r.get('ttft_ms', float('nan')):.0f} | "
              f"{r.get('itl_p50_ms', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
