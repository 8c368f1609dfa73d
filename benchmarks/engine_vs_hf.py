"""Output tokens/s of kvlab's engine against HF transformers on the same GPU, in one run: a random
bf16 model of a Llama shape, two workloads, three systems.

    python benchmarks/engine_vs_hf.py --shape llama-3-8b --workload sharegpt --num-requests 1000
    python benchmarks/engine_vs_hf.py --shape llama-3.2-1b --workload equal --num-requests 256 \\
        --prompt-len 256 --max-tokens 256

Workloads: ``equal`` (every request ``--prompt-len`` random tokens in, exactly ``--max-tokens``
out: static batching's best case) and ``sharegpt`` (``kvlab.workloads.sharegpt_like``: ShareGPT's
length distributions, each request with its own output length). Every request generates exactly
its own output length (EOS ignored), all queued at once (offline throughput).

Systems: kvlab's ``Engine`` (chunked prefill, paged KV, the Pallas kernels, planning ahead; its
compilation time is reported apart and not counted); transformers' continuous batching (the
``ContinuousBatchingManager`` behind ``generate_batch``, paged attention, one request per prompt
with its own ``max_new_tokens``); transformers' static ``generate`` (batches of ``--batch``
left-padded prompts, each batch decoding to its longest output: only each request's own tokens
count as output). Weights are random in each system (throughput depends on shapes, not values).
Prints a markdown table; ``--json`` keeps the rows. All systems share one process and one GPU:
with a transformers system in the run JAX may take ``--jax-memory-fraction`` of the GPU (0.4,
unless ``XLA_PYTHON_CLIENT_MEM_FRACTION`` is set), since it would otherwise reserve 75% at its
first use and leave torch too little.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

SHAPES = {"llama-3.2-1b": "llama_3_2_1b", "llama-3-8b": "llama_3_8b", "tiny": "tiny"}


def workload(args, vocab_size: int) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request."""
    if args.workload == "sharegpt":
        from kvlab.workloads import sharegpt_like
        return [(r.prompt_token_ids, r.max_tokens)
                for r in sharegpt_like(args.num_requests, seed=0, vocab_size=vocab_size,
                                       max_prompt=args.max_prompt, max_total=args.max_total)]
    rng = np.random.default_rng(0)
    return [(rng.integers(3, vocab_size, args.prompt_len).tolist(), args.max_tokens)
            for _ in range(args.num_requests)]


def kvlab_run(config, requests, args) -> dict:
    import jax.numpy as jnp

    import kvlab
    from kvlab.models import LlamaModel

    model = LlamaModel(config, dtype=jnp.bfloat16, seed=0)
    longest = max(len(p) + o for p, o in requests)
    engine = kvlab.Engine(model, scheduler=kvlab.ChunkedScheduler(
        max_num_seqs=args.batch, max_num_batched_tokens=args.step_tokens, decode_steps=args.decode_steps),
        max_model_len=longest + 16)
    params = [kvlab.SamplingParams(max_tokens=o, ignore_eos=True) for _, o in requests]
    outs = engine.generate([p for p, _ in requests], params)
    m = engine.metrics(outs)
    name = "kvlab" if args.decode_steps == 1 else f"kvlab ({args.decode_steps} decode steps a plan)"
    return {"system": name, "output_tokens": int(m["output_tokens"]),
            "wall_s": engine.last_run.wall_seconds - m["compile_seconds"],
            "tok_per_s": m["output_tokens_per_s"], "note": f"compile {m['compile_seconds']:.0f} s apart"}


def hf_model(config, attn: str):
    import torch
    import transformers

    hf = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = transformers.LlamaForCausalLM._from_config(hf, attn_implementation=attn)
    torch.set_default_dtype(torch.float32)
    return model.eval(), device


def hf_continuous(config, requests, args) -> dict:
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    model, _ = hf_model(config, "paged|sdpa")
    gen = GenerationConfig(max_new_tokens=max(o for _, o in requests), do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    cb = ContinuousBatchingConfig(max_batch_tokens=args.step_tokens, max_requests_per_batch=args.batch)

    def run(reqs) -> tuple[int, float]:
        manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        manager.start()
        t0 = time.perf_counter()
        ids = {manager.add_request(p, max_new_tokens=o) for p, o in reqs}
        done: dict[str, int] = {}
        while len(done) < len(ids):                   # results come as requests finish
            result = manager.get_result(timeout=3600)
            if result is None:
                raise RuntimeError("transformers' generation thread stopped before every request ended")
            done[result.request_id] = len(result.generated_tokens)
        tokens = sum(done.values())
        wall = time.perf_counter() - t0
        manager.stop(block=True)
        return tokens, wall

    with torch.inference_mode():
        run(requests[:min(8, len(requests))])                      # warm-up
        tokens, wall = run(requests)
    return {"system": "transformers continuous batching (paged|sdpa)", "output_tokens": tokens,
            "wall_s": wall, "tok_per_s": tokens / wall, "note": ""}


def hf_static(config, requests, args) -> dict:
    import torch

    model, device = hf_model(config, "sdpa")

    def run(reqs) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(reqs), args.batch):
            group = reqs[i:i + args.batch]
            width = max(len(p) for p, _ in group)
            ids = torch.zeros((len(group), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, (p, _) in enumerate(group):                     # left padding
                ids[j, width - len(p):] = torch.tensor(p)
                mask[j, width - len(p):] = 1
            n = max(o for _, o in group)
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.inference_mode():
        run(requests[:min(args.batch, len(requests))])             # warm-up
        wall = run(requests)
    tokens = sum(o for _, o in requests)                          # each request's own tokens
    return {"system": f"transformers static generate (sdpa, batch {args.batch})", "output_tokens": tokens,
            "wall_s": wall, "tok_per_s": tokens / wall, "note": "batches decode to their longest output"}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    ap.add_argument("--workload", choices=["equal", "sharegpt"], default="sharegpt")
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--prompt-len", type=int, default=256, help="equal workload: prompt tokens")
    ap.add_argument("--max-tokens", type=int, default=256, help="equal workload: output tokens")
    ap.add_argument("--max-prompt", type=int, default=1024, help="sharegpt workload: longest prompt")
    ap.add_argument("--max-total", type=int, default=2048, help="sharegpt workload: longest request")
    ap.add_argument("--batch", type=int, default=256, help="most sequences a step holds (all systems)")
    ap.add_argument("--step-tokens", type=int, default=8192, help="most tokens a step computes")
    ap.add_argument("--systems", default="kvlab,hf-continuous,hf-static")
    ap.add_argument("--decode-steps", type=int, default=1,
                    help="kvlab: decode steps a plan runs when only decodes run (multi-step decoding)")
    ap.add_argument("--jax-memory-fraction", type=float, default=0.4,
                    help="with a transformers system in the run: the GPU memory JAX may take "
                         "(XLA_PYTHON_CLIENT_MEM_FRACTION, unless set), the rest left to torch")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if any(name.startswith("hf") for name in args.systems.split(",")):
        # JAX reserves 75% of the GPU at its first use and keeps it; leave transformers room
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(args.jax_memory_fraction))
    from kvlab.models import ModelConfig

    config = getattr(ModelConfig, SHAPES[args.shape])()
    requests = workload(args, config.vocab_size)
    runners = {"kvlab": kvlab_run, "hf-continuous": hf_continuous, "hf-static": hf_static}
    rows = []
    for name in args.systems.split(","):
        try:
            rows.append(runners[name](config, requests, args))
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, the others go on
            rows.append({"system": name, "output_tokens": 0, "wall_s": 0.0, "tok_per_s": 0.0,
                         "note": f"failed: {type(e).__name__}: {str(e)[:200]}"})
        print(rows[-1], flush=True)
    ins = sum(len(p) for p, _ in requests)
    print(f"\n{args.shape} (random bf16 weights), {args.workload} workload: {len(requests)} requests, "
          f"{ins} prompt and {sum(o for _, o in requests)} output tokens; batch {args.batch}")
    print("\n| system | output tok/s | wall (s) | kvlab's speedup | note |\n|---|---|---|---|---|")
    base = rows[0]["tok_per_s"] if rows and rows[0]["system"].startswith("kvlab") else 0.0
    for r in rows:
        ratio = f"{base / r['tok_per_s']:.1f}x" if base and r["tok_per_s"] else ""
        print(f"| {r['system']} | {r['tok_per_s']:,.0f} | {r['wall_s']:.1f} | {ratio} | {r['note']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
