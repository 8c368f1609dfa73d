"""Running a model from the command line: the engine built from the flags, ``kvlab generate``
(stream one answer) and ``kvlab demo`` (chat prompts through the bundled SmolLM2 with their
metrics, then the seed-system presets compared on one workload)."""

from __future__ import annotations

import sys
import time

from kvlab.attention.select import attention_by_name

# Prompts SmolLM2-135M-Instruct answers well, each within --max-tokens 96, greedy. (Greedy decoding
# loops on some prompts - "Give me three tips for learning to cook." gives "1. **1011111..." - and
# sampling, even at temperature 0.2, derails others: its first token after "What is the capital of
# France?" is "The" at 15% and "L" at 14%.)
DEMO_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for a good night's sleep.",
    "Name three planets of the solar system.",
    "What is the largest ocean on Earth?",
    "Describe a rainbow in one sentence.",
    "Why is exercise good for you?",
)
DEMO_PRESETS = ("vllm", "sglang", "tgi", "lmdeploy", "trtllm", "deepspeed", "static")


def _build_engine(args, attention=None):
    """(engine, tokenizer) from the engine flags; ``attention``: a backend already resolved."""
    import jax.numpy as jnp

    import kvlab

    attention = attention or attention_by_name(args.attention)     # before the model: fails fast
    model, tokenizer = kvlab.models.load(args.model, dtype=jnp.dtype(args.dtype))
    cache = kvlab.PagedKVCache(num_pages=args.num_pages, page_size=args.page_size,
                               prefix_caching=args.prefix_caching)
    scheduler = kvlab.ChunkedScheduler(max_num_seqs=args.max_num_seqs,
                                       max_num_batched_tokens=args.max_num_batched_tokens)
    engine = kvlab.Engine(model, cache=cache, scheduler=scheduler, tokenizer=tokenizer,
                          max_model_len=args.max_model_len, attention=attention)
    return engine, tokenizer


def _prompt_ids(tokenizer, text: str, raw: bool) -> list[int]:
    if tokenizer is None:
        raise ValueError("this model has no tokenizer (no tokenizer.json in its directory); text prompts "
                         "need one")
    if raw or not tokenizer.chat_template:
        return tokenizer.encode(text)
    return tokenizer.encode_chat(text)


def _sampling(args):
    import kvlab

    return kvlab.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed)


def cmd_generate(args) -> int:
    params = _sampling(args)                    # a bad value fails before the model loads
    engine, tokenizer = _build_engine(args)
    for event in engine.stream([_prompt_ids(tokenizer, args.prompt, args.raw)], params):
        sys.stdout.write(event.new_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _model_line(args, config) -> str:
    """What the model is, in one line (the bundled one: its name, size and format)."""
    from kvlab.models import bundled

    size = f"{config.num_params() / 1e6:.0f}M parameters"
    if args.model not in bundled.BUNDLED_MODELS:
        return f"model: {args.model}, {size}, {args.dtype}"
    name, fmt = bundled.describe(args.model)
    return (f"model: {name}, {size}, {fmt} dequantized to {args.dtype} - a small model: expect simple, "
            f"short answers (and the odd mistake)")


def _sampling_line(params) -> str:
    if params.temperature == 0:
        return ("decoding: greedy, the likeliest token at each step (--temperature 0.3 --top-p 0.9 would "
                "sample instead)")
    return (f"decoding: sampling at temperature {params.temperature}, top-p {params.top_p}, top-k "
            f"{params.top_k or 'off'}, seed {params.seed} for every request (the same seed, the same text)")


def cmd_demo(args) -> int:
    import jax
    from rich.console import Console

    from kvlab.bench import presets
    from kvlab.models import bundled

    console = Console(width=None if sys.stdout.isatty() else 160)      # a log keeps whole tables
    compare = presets.expand_names(args.compare)      # before the chat: a bad name fails fast
    attention = attention_by_name(args.attention)       # and a backend this machine cannot run
    params = _sampling(args)
    console.print(f"[bold]kvlab demo[/bold] on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
                  f"JAX {jax.__version__}, attention: {attention.name}")
    name = bundled.describe(args.model)[0] if args.model in bundled.BUNDLED_MODELS else args.model
    console.print(f"loading {name} ...", markup=False)
    t0 = time.perf_counter()
    engine, tokenizer = _build_engine(args, attention)
    console.print(f"  loaded in {time.perf_counter() - t0:.1f} s")
    console.print(_model_line(args, engine.config), markup=False)
    prompts = [_prompt_ids(tokenizer, p, args.raw) for p in DEMO_PROMPTS[:args.num_prompts]]
    console.print(_sampling_line(params))
    completions, wall, run = _warm_up_and_run(engine, prompts, params, args.prefix_caching, console)
    for prompt, c in zip(DEMO_PROMPTS, completions):
        console.rule(f"[cyan]{prompt}")
        console.print(c.text.strip(), markup=False, highlight=False)
    _print_metrics(engine, completions, wall, run, args.prefix_caching, console)
    if compare:
        _compare_presets(args, compare, engine, attention, console)
    return 0


def _warm_up_and_run(engine, prompts, params, prefix_caching: bool, console):
    """Warm up on the same prompts (compiling every step shape they meet), then the timed run:
    (completions, wall seconds, {"warm_s", "warm_compiles", "warm_steps", "peak_pages"})."""
    from rich.progress import Progress

    run = {"peak_pages": 0}
    console.print("compiling the engine's step (first call) and warming up on the same prompts ...")
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("warm-up run (compiles the step shapes)", total=None)
        # The same workload once, so the timed run compiles nothing (the step is compiled once per
        # bucket shape; see docs/concepts.md).
        engine.generate(prompts, params)
        if prefix_caching:   # a second pass has the prefix hits (and shapes) of the timed run
            engine.generate(prompts, params)
        run.update(warm_s=time.perf_counter() - t0, warm_compiles=engine.num_compilations,
                   warm_steps=engine.runner.steps)
        console.print(f"  done in {run['warm_s']:.1f} s ({run['warm_compiles']} step shapes compiled); "
                      f"the timed run:")
        progress.update(task, total=len(prompts), completed=0, description="timed run")

        def on_step(done, total):
            run["peak_pages"] = max(run["peak_pages"], engine.cache.stats(detailed=False).pages_used)
            progress.update(task, completed=done)

        t1 = time.perf_counter()
        completions = engine.generate(prompts, params, progress=on_step)
        return completions, time.perf_counter() - t1, run


def _print_metrics(engine, completions, wall: float, run: dict, prefix_caching: bool, console) -> None:
    from rich.table import Table

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
        ("engine steps", f"{engine.runner.steps - run['warm_steps']}"),
        ("step compilations (warm-up / timed run)",
         f"{run['warm_compiles']} / {engine.num_compilations - run['warm_compiles']}"),
        ("preemptions", f"{int(m['preemptions'])}"),
        ("KV pages peak / total (page size)",
         f"{run['peak_pages']} / {stats.pages_total} ({stats.page_size})"),
        ("KV pages in use after the run", f"{stats.pages_used}"),
        ("KV memory waste, time-averaged", f"{stats.memory.waste:.1%}"),
        ("warm-up run, compiling included (s)", f"{run['warm_s']:.1f}"),
    ]
    if prefix_caching:
        rows.append(("prefix hit rate (all runs) / pages cached",
                     f"{stats.hit_rate:.1%} / {stats.pages_cached}"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print("All prompts arrive at once and share each engine step; TTFT is the time to a request's "
                  "first token, inter-token latency the time between its next ones.")


def _compare_presets(args, names: list[str], engine, attention, console) -> None:
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
        warmup=1, attention=attention)          # all at once: one warm-up meets every shape
    print_table(table_rows, console, "kvlab demo: presets compared", ["preset"])
    optimal = workloads.shared_prefix_optimal_hit_rate(**shape)
    console.print(f"KV capacity {args.compare_kv_tokens} tokens and a {args.compare_token_budget}-token "
                  f"step budget for every preset; the best possible hit rate here is {optimal:.1%}")
    for line in _comparison_notes(args, table_rows, len(reqs), optimal):
        console.print(line, markup=False)


def _comparison_notes(args, rows: list[dict], num_requests: int, optimal: float) -> list[str]:
    """How to read the comparison table: where the hit rates, lmdeploy's inter-token latency and
    static batching's TTFT come from (the figures from the table and the flags)."""
    import statistics

    from kvlab.schedulers.shapes import next_pow2

    hit = {r["preset"]: r["hit_rate"] for r in rows}
    reuse, below = [p for p, h in hit.items() if h > 0], [p for p, h in hit.items() if 0 < h < optimal - 1e-6]
    none = [p for p, h in hit.items() if h == 0]
    notes = [f"How to read it: the prefix caches ({', '.join(reuse) or 'none here'}) reuse a group's system "
             f"prompt once one request has computed it"
             + (f"; {', '.join(below)} start more requests in that same step, before it is cached "
                f"(chunked prefill fills the budget), so some compute it again" if below else "")
             + (f"; {', '.join(none)} compute it for every request." if none else ".")]
    itl = {r["preset"]: r["itl_p50_s"] for r in rows}
    if "lmdeploy" in itl and len(itl) > 1:
        ratio = itl["lmdeploy"] / statistics.median(v for p, v in itl.items() if p != "lmdeploy")
        rows_lmdeploy, rows_others = next_pow2(args.compare_token_budget), next_pow2(num_requests, 16)
        notes.append(f"lmdeploy's persistent batch pads every step to its whole token budget and all slots "
                     f"(one compiled shape): each decode step computes {rows_lmdeploy} token rows where the "
                     f"others pad {num_requests} decodes to {rows_others}; on a model this small that "
                     f"padding sets its inter-token latency ({ratio:.1f}x the others' median).")
    per_batch = args.compare_token_budget // (args.compare_system_tokens + 16)
    if "static" in hit and per_batch < num_requests:
        notes.append(f"static batching forms a batch in one step and admits no one until it has finished: "
                     f"a {args.compare_token_budget}-token step holds {per_batch} whole prompt"
                     f"{'s' * (per_batch > 1)}, so it serves the requests {per_batch} at a time (its TTFT).")
    return notes


