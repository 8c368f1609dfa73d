"""The ``kvlab`` command: ``kvlab generate "prompt"`` streams text; ``kvlab demo`` runs a batch of
chat prompts through the bundled SmolLM2 and prints the generations with a metrics table;
``kvlab bench`` / ``kvlab sweep`` compare seed-system presets on a workload (``kvlab.cli_bench``)."""

from __future__ import annotations

import argparse
import sys
import time

from kvlab import cli_bench

DEMO_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to cook.",
    "What is a KV cache in a language model?",
    "Translate 'good morning' into Spanish and German.",
    "Name three planets of the solar system.",
    "Why do cats purr?",
)

DEMO_PRESETS = ("vllm", "sglang", "tgi", "lmdeploy", "trtllm", "deepspeed", "static")


def _build_engine(args):
    import jax.numpy as jnp

    import kvlab

    model, tokenizer = kvlab.models.load(args.model, dtype=jnp.dtype(args.dtype))
    cache = kvlab.PagedKVCache(num_pages=args.num_pages, page_size=args.page_size,
                               prefix_caching=args.prefix_caching)
    scheduler = kvlab.ContinuousScheduler(max_num_seqs=args.max_num_seqs,
                                          max_num_batched_tokens=args.max_num_batched_tokens)
    attention = {"auto": None, "pallas": kvlab.PallasAttention(),
                 "reference": kvlab.ReferenceAttention()}[args.attention]
    engine = kvlab.Engine(model, cache=cache, scheduler=scheduler, tokenizer=tokenizer,
                          max_model_len=args.max_model_len, attention=attention)
    return engine, tokenizer


def _prompt_ids(tokenizer, text: str, raw: bool) -> list[int]:
    if raw or not tokenizer.chat_template:
        return tokenizer.encode(text)
    return tokenizer.encode_chat(text)


def cmd_generate(args) -> int:
    import kvlab

    engine, tokenizer = _build_engine(args)
    params = kvlab.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p)
    for event in engine.stream([_prompt_ids(tokenizer, args.prompt, args.raw)], params):
        sys.stdout.write(event.new_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_demo(args) -> int:
    import jax
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    import kvlab

    console = Console(width=None if sys.stdout.isatty() else 160)      # a log keeps whole tables
    compare = cli_bench.preset_names(args.compare)      # before the chat: a bad name fails fast
    console.print(f"[bold]kvlab demo[/bold]: {args.model} on {jax.devices()[0].device_kind} "
                  f"({jax.default_backend()}), dtype {args.dtype}, JAX {jax.__version__}")
    t0 = time.perf_counter()
    engine, tokenizer = _build_engine(args)
    console.print(f"model loaded in {time.perf_counter() - t0:.1f} s "
                  f"({engine.config.num_params() / 1e6:.0f}M parameters), "
                  f"attention: {engine.runner.attention.name}")
    prompts = [_prompt_ids(tokenizer, p, args.raw) for p in DEMO_PROMPTS[:args.num_prompts]]
    params = kvlab.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p)
    peak = {"pages": 0}

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("warm-up run (compiles the step shapes)", total=None)

        # Warm-up: the same workload once, so the timed run below compiles nothing (the step is
        # compiled once per bucket shape; see docs/concepts.md).
        engine.generate(prompts, params)
        if args.prefix_caching:   # a second pass has the prefix hits (and shapes) of the timed run
            engine.generate(prompts, params)
        compile_s = time.perf_counter() - t0
        warm_compiles, warm_steps = engine.num_compilations, engine.runner.steps
        t1 = time.perf_counter()
        progress.update(task, total=len(prompts), completed=0, description="timed run")

        def on_step(done, total):
            peak["pages"] = max(peak["pages"], engine.cache.stats(detailed=False).pages_used)
            progress.update(task, completed=done)

        completions = engine.generate(prompts, params, progress=on_step)
        wall = time.perf_counter() - t1
    for prompt, c in zip(DEMO_PROMPTS, completions):
        console.rule(f"[cyan]{prompt}")
        console.print(c.text.strip(), markup=False, highlight=False)
    m = engine.metrics(completions, wall)
    stats = engine.cache.stats()
    table = Table(title="kvlab demo metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{int(m['requests'])}"),
        ("output tokens", f"{int(m['output_tokens'])}"),
        ("wall time (s)", f"{m['wall_s']:.2f}"),
        ("throughput (output tok/s)", f"{m['output_tokens_per_s']:.1f}"),
        ("TTFT mean / P99 (ms)", f"{1e3 * m['ttft_mean_s']:.0f} / {1e3 * m['ttft_p99_s']:.0f}"),
        ("inter-token latency P50 / P99 (ms)", f"{1e3 * m['itl_p50_s']:.1f} / {1e3 * m['itl_p99_s']:.1f}"),
        ("engine steps", f"{engine.runner.steps - warm_steps}"),
        ("step compilations (warm-up / timed run)",
         f"{warm_compiles} / {engine.num_compilations - warm_compiles}"),
        ("preemptions", f"{int(m['preemptions'])}"),
        ("KV pages peak / total (page size)",
         f"{peak['pages']} / {stats.pages_total} ({stats.page_size})"),
        ("KV pages in use after the run", f"{stats.pages_used}"),
        ("KV memory waste, time-averaged", f"{stats.memory.waste:.1%}"),
        ("load + warm-up run (s)", f"{compile_s:.1f}"),
    ]
    if args.prefix_caching:
        rows.append(("prefix hit rate (all runs) / pages cached",
                     f"{stats.hit_rate:.1%} / {stats.pages_cached}"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if compare:
        _compare_presets(args, compare, engine, console)
    return 0


def _compare_presets(args, names: list[str], engine, console) -> None:
    """The seed-system presets (and static batching) on a small shared-prefix workload: every
    request at once, one KV capacity and token budget for all, a warm-up run each."""
    from kvlab import workloads
    from kvlab.bench.compare import Workload
    from kvlab.cli_bench import print_table, serve_presets

    shape = dict(groups=args.compare_groups, prompts_per_group=4, system_tokens=args.compare_system_tokens,
                 question_tokens=16)
    reqs = workloads.shared_prefix(**shape, output_tokens=args.compare_output_tokens, seed=0,
                                   vocab_size=engine.config.vocab_size)
    workload = Workload.open_loop("shared-prefix", workloads.all_at_once(reqs))
    max_len = args.compare_system_tokens + 16 + args.compare_output_tokens
    console.rule(f"[bold]presets on a shared-prefix workload: {len(reqs)} requests "
                 f"({args.compare_groups} groups, {args.compare_system_tokens}-token system prompts), "
                 f"{args.compare_output_tokens} output tokens each, all at once")
    table_rows, _ = serve_presets(
        engine.model, names, workload, console, fields={}, kv_tokens=args.compare_kv_tokens,
        max_num_seqs=args.max_num_seqs, token_budget=args.compare_token_budget, max_model_len=max_len,
        warmup=1, attention=engine.runner.attention)          # all at once: one warm-up meets every shape
    print_table(table_rows, console, "kvlab demo: presets compared", ["preset"])
    optimal = workloads.shared_prefix_optimal_hit_rate(**shape)
    console.print(f"KV capacity {args.compare_kv_tokens} tokens and a {args.compare_token_budget}-token "
                  f"step budget for every preset; the best possible hit rate here is {optimal:.1%}")


def _add_engine_args(p: argparse.ArgumentParser, *, max_tokens: int) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="bundled name, local transformers directory or .gguf file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--num-pages", type=int, default=512)
    p.add_argument("--prefix-caching", action="store_true",
                   help="hash-chained prefix caching (vLLM's): repeated prompt prefixes are reused")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--attention", default="auto", choices=["auto", "pallas", "reference"],
                   help="attention backend: auto = Pallas kernels on a GPU, the jnp reference elsewhere")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kvlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="stream a completion of one prompt")
    gen.add_argument("prompt")
    _add_engine_args(gen, max_tokens=128)
    demo = sub.add_parser("demo", help="run a batch of chat prompts through the bundled SmolLM2")
    demo.add_argument("--num-prompts", type=int, default=len(DEMO_PROMPTS))
    demo.add_argument("--compare", type=lambda s: [] if s == "none" else s.split(","),
                      default=list(DEMO_PRESETS),
                      help="presets to compare on a shared-prefix workload after the chat (none: skip)")
    demo.add_argument("--compare-groups", type=int, default=2, help="shared-prefix groups (4 prompts each)")
    demo.add_argument("--compare-system-tokens", type=int, default=128)
    demo.add_argument("--compare-output-tokens", type=int, default=16)
    demo.add_argument("--compare-kv-tokens", type=int, default=4096)
    demo.add_argument("--compare-token-budget", type=int, default=256)
    _add_engine_args(demo, max_tokens=96)
    cli_bench.add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        if args.command in ("bench", "sweep"):
            return cli_bench.run(args)
        return cmd_generate(args) if args.command == "generate" else cmd_demo(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"kvlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
