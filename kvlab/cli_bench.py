"""``kvlab bench`` and ``kvlab sweep``: serve a workload with seed-system presets on a real model
and clock (``kvlab.bench.harness``), print the comparison, and write a results folder with the
table (CSV/JSON) and PNG plots."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

WORKLOADS = ("sharegpt", "shared-prefix", "long-prompt")


def _requests(args, vocab_size: int, rate: float | None):
    from kvlab import workloads as w

    if args.workload == "sharegpt":
        reqs = w.sharegpt_like(args.num_requests, seed=args.seed, vocab_size=vocab_size,
                               max_prompt=args.max_prompt, max_total=args.max_total)
    elif args.workload == "long-prompt":
        reqs = w.long_prompt_mix(args.num_requests, seed=args.seed, vocab_size=vocab_size,
                                 max_prompt=args.max_prompt)
    else:
        groups = max(1, args.num_requests // args.prompts_per_group)
        reqs = w.shared_prefix(groups=groups, prompts_per_group=args.prompts_per_group,
                               system_tokens=args.system_tokens, question_tokens=args.question_tokens,
                               output_tokens=args.output_tokens, seed=args.seed, vocab_size=vocab_size)
    if args.output_cap:
        reqs = [dataclasses.replace(r, max_tokens=min(r.max_tokens, args.output_cap)) for r in reqs]
    return w.all_at_once(reqs) if rate is None else w.poisson_arrivals(reqs, rate, seed=args.seed)


def _serve(model, preset_name: str, requests, args):
    """A fresh engine for the preset; a warm-up pass over the same requests (compiles the step
    shapes), then the measured run on a fresh cache."""
    from kvlab.bench import presets, run_workload
    from kvlab.workloads import all_at_once

    def build():
        p = presets.PRESETS[preset_name](kv_tokens=args.kv_tokens, max_num_seqs=args.max_num_seqs,
                                         token_budget=args.token_budget)
        return p, p.engine(model, max_model_len=args.max_model_len)

    if args.warmup:
        run_workload(build()[1], all_at_once(requests))
    p, engine = build()
    return p, run_workload(engine, requests)


def _table(rows, console, title):
    from rich.table import Table

    table = Table(title=title)
    cols = [("preset", "preset", "{}"), ("rate", "rate (req/s)", "{}"),
            ("output_tokens_per_s", "output tok/s", "{:.1f}"), ("ttft_p50_s", "TTFT P50 (ms)", "ms"),
            ("ttft_p99_s", "TTFT P99 (ms)", "ms"), ("itl_p50_s", "ITL P50 (ms)", "ms"),
            ("itl_p99_s", "ITL P99 (ms)", "ms"), ("preemptions", "preempt.", "{:.0f}"),
            ("hit_rate", "hit rate", "{:.1%}"), ("kv_usage_peak", "KV peak", "{:.0%}")]
    for _, name, _ in cols:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(*[(f"{1e3 * r[k]:.1f}" if fmt == "ms" else fmt.format(r[k])) for k, _, fmt in cols])
    console.print(table)


def cmd_bench(args, rates: list[float | None]) -> int:
    import jax.numpy as jnp
    from rich.console import Console

    import kvlab
    from kvlab.bench import plots, presets
    from kvlab.bench.sweep import write_results

    console = Console(width=None if sys.stdout.isatty() else 160)     # a log keeps the whole table
    unknown = [p for p in args.preset if p not in presets.PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; known: {', '.join(presets.PRESETS)}")
    model, _ = kvlab.models.load(args.model, dtype=jnp.dtype(args.dtype))
    rows, runs = [], {}
    for rate in rates:
        requests = _requests(args, model.config.vocab_size, rate)
        for name in args.preset:
            console.print(f"serving {len(requests)} {args.workload} requests with the {name} preset"
                          + ("" if rate is None else f" at {rate} req/s"))
            p, run = _serve(model, name, requests, args)
            for line in p.missing:
                console.print(f"  [yellow]{name} lacks[/yellow]: {line}")
            rows.append({"preset": name, "rate": "all at once" if rate is None else rate, **run.summary()})
            runs[name if len(rates) == 1 else f"{name} @ {rate}"] = run
    _table(rows, console, f"kvlab bench: {args.workload} on {args.model}")
    if args.out:
        out = pathlib.Path(args.out)
        write_results(rows, out)
        plots.plot_latencies(runs, out / "latencies.png")
        plots.plot_kv_usage(runs, out / "kv_usage.png")
        if len(rates) > 1:
            for y in ("output_tokens_per_s", "ttft_p99_s", "itl_p99_s"):
                plots.plot_sweep(rows, x="rate", y=y, hue="preset", path=out / f"{y}_vs_rate.png")
        console.print(f"results in {out}/ (results.csv, results.json, *.png)")
    return 0


def add_parsers(sub) -> None:
    for name, help_ in (("bench", "serve a workload with seed-system presets and compare them"),
                        ("sweep", "the same over a grid of request rates, with plots against the rate")):
        p = sub.add_parser(name, help=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--preset", type=lambda s: s.split(","), default=["vllm"],
                       help="comma-separated presets: vllm, sglang, tgi, lmdeploy, trtllm, deepspeed")
        p.add_argument("--workload", choices=WORKLOADS, default="sharegpt")
        if name == "bench":
            p.add_argument("--rate", type=float, default=None,
                           help="Poisson arrivals (req/s); default: all at once")
        else:
            p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                           default=[1.0, 2.0, 4.0], help="comma-separated Poisson rates (req/s)")
        p.add_argument("--num-requests", type=int, default=32)
        p.add_argument("--max-prompt", type=int, default=1024)
        p.add_argument("--max-total", type=int, default=2048)
        p.add_argument("--output-cap", type=int, default=0, help="cap every request's output (0: none)")
        p.add_argument("--prompts-per-group", type=int, default=8, help="shared-prefix workload")
        p.add_argument("--system-tokens", type=int, default=512, help="shared-prefix workload")
        p.add_argument("--question-tokens", type=int, default=64, help="shared-prefix workload")
        p.add_argument("--output-tokens", type=int, default=64, help="shared-prefix workload")
        p.add_argument("--kv-tokens", type=int, default=16384, help="KV capacity given to every preset")
        p.add_argument("--max-num-seqs", type=int, default=32)
        p.add_argument("--token-budget", type=int, default=2048)
        p.add_argument("--max-model-len", type=int, default=2048)
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-warmup", dest="warmup", action="store_false",
                       help="skip the compile pass before each measured run")
        p.add_argument("--out", help="results folder (table and plots)")


def run(args) -> int:
    return cmd_bench(args, [args.rate] if args.command == "bench" else args.rates)
