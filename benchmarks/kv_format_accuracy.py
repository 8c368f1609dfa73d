"""Accuracy of each KV format on a real model and real text: the bundled SmolLM2-135M-Instruct on
English prose that Python itself ships (the reference documentation in the standard library's
``pydoc_data.topics``), per format against the plain (model-dtype) KV of the same run:

* perplexity over ``--windows`` windows of ``--window`` tokens (teacher forced), and its change;
* logit error: mean and max absolute difference of the next-token logits, over the same windows;
* greedy agreement: tokens of ``--max-tokens``-token greedy completions of the demo's chat prompts
  that match plain KV's, position by position up to the first difference and in total.

Every format goes through ``model.dense_logits(..., kv_format=...)``: each query reads K/V exactly
as a cache in that format gives them (formats with per-token scales store nothing else; fp8 uses
static scales of 1.0, vLLM's default when a checkpoint has none; KIVI reads each page quantized
once the query sees it whole, in groups of 32 tokens).

    python benchmarks/kv_format_accuracy.py [--dtype bfloat16] [--windows 8] [--window 512]
                                            [--formats int2 kivi2 ...]
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics

import jax
import jax.numpy as jnp
import numpy as np

import kvlab
from kvlab.cli import DEMO_PROMPTS
from kvlab.engine import DenseReferenceDecoder
from kvlab.kvcache.formats import PLAIN, AsymmetricInt, Fp8E4M3, Fp8E5M2, Int4, Int8, Kivi, StaticScales


def formats():
    unit = StaticScales(k=1.0, v=1.0)
    return [PLAIN, Fp8E4M3(scales=unit), Fp8E5M2(scales=unit), Int8(), Int4(), AsymmetricInt(bits=2),
            Kivi(bits=4, group_size=32), Kivi(bits=2, group_size=32)]


def text_windows(tokenizer, n: int, length: int) -> np.ndarray:
    """``n`` windows of ``length`` tokens from the start of the Python reference text."""
    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    ids = tokenizer.encode(text)
    if len(ids) < n * length:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {n} x {length}")
    return np.asarray(ids[:n * length], np.int32).reshape(n, length)


def window_logits(model, fmt, windows: np.ndarray) -> np.ndarray:
    """[n, length, V] float32 logits of every window through ``fmt``."""
    f = jax.jit(lambda t: model.dense_logits(t, kv_format=fmt))
    return np.stack([np.asarray(f(jnp.asarray(w))) for w in windows])


def perplexity(logits: np.ndarray, windows: np.ndarray) -> float:
    logp = jax.nn.log_softmax(jnp.asarray(logits[:, :-1]), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(windows[:, 1:, None]), axis=-1)
    return float(jnp.exp(nll.mean()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", default=None)
    ap.add_argument("--formats", nargs="*", default=None, help="format names to run (plain always runs)")
    args = ap.parse_args()
    model, tok = kvlab.models.load("smollm2-135m", dtype=jnp.dtype(args.dtype))
    windows = text_windows(tok, args.windows, args.window)
    prompts = [tok.encode_chat(DEMO_PROMPTS[i % len(DEMO_PROMPTS)]) for i in range(args.prompts)]
    rows, base_logits, base_tokens = [], None, None
    chosen = [f for f in formats() if f == PLAIN or args.formats is None or f.name in args.formats]
    for fmt in chosen:
        logits = window_logits(model, fmt, windows)
        dec = DenseReferenceDecoder(model, kv_format=fmt)
        tokens = [dec.greedy(p, args.max_tokens) for p in prompts]
        if fmt == PLAIN:
            base_logits, base_tokens = logits, tokens
        err = np.abs(logits - base_logits)
        prefix = [next((i for i, (a, b) in enumerate(zip(t, u)) if a != b), len(t))
                  for t, u in zip(tokens, base_tokens)]
        same = sum(a == b for t, u in zip(tokens, base_tokens) for a, b in zip(t, u))
        rows.append({"format": fmt.name, "perplexity": perplexity(logits, windows),
                     "logit_mean_abs_err": float(err.mean()), "logit_max_abs_err": float(err.max()),
                     "greedy_same_prefix": float(np.mean(prefix)) / args.max_tokens,
                     "greedy_same_tokens": same / sum(map(len, base_tokens))})
        print(rows[-1], flush=True)
    base = rows[0]["perplexity"]
    print(f"\nSmolLM2-135M-Instruct ({args.dtype}), {args.windows} x {args.window} tokens of "
          f"pydoc_data.topics, {args.prompts} chat prompts x {args.max_tokens} greedy tokens, "
          f"{jax.devices()[0]}")
    print("| KV format | perplexity | change | logit error mean / max | greedy: same prefix | same tokens |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['perplexity']:.3f} | {100 * (r['perplexity'] / base - 1):+.2f}% | "
              f"{r['logit_mean_abs_err']:.4f} / {r['logit_max_abs_err']:.3f} | "
              f"{100 * r['greedy_same_prefix']:.0f}% | {100 * r['greedy_same_tokens']:.0f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
