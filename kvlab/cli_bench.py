"""``kvlab bench`` and ``kvlab sweep``: serve a workload with seed-system presets (or a ``custom``
composition) on a real model and clock, print the comparison, and write a results folder with the
table (CSV/JSON) and PNG plots.

``--set FIELD=VALUE`` fixes a preset field (``page_size=32``, ``cache=radix`` for ``custom``);
``kvlab sweep --vary FIELD=V1,V2`` varies one (repeat it for a grid). ``rate`` is a field too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import itertools
import pathlib
import sys

WORKLOADS = ("sharegpt", "shared-prefix", "long-prompt", "few-shot", "tree-of-thought", "sessions",
             "long-document")


def _value(text: str):
    """``FIELD=VALUE`` values: none/true/false, then int, float, else the string."""
    low = text.strip().lower()
    if low in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[low]
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text.strip()


def _assignments(items: list[str], *, many: bool) -> dict:
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field or not value:
            raise ValueError(f"expected FIELD=VALUE{'[,VALUE...]' if many else ''}, got {item!r}")
        out[field.strip()] = [_value(v) for v in value.split(",")] if many else _value(value)
    return out


def _workload(args, vocab_size: int, rate: float | None):
    from kvlab import workloads as w
    from kvlab.bench.compare import Workload

    n, seed, cap = args.num_requests, args.seed, args.output_cap or None

    def arrive(reqs):
        reqs = [dataclasses.replace(r, max_tokens=min(r.max_tokens, cap or r.max_tokens)) for r in reqs]
        return w.all_at_once(reqs) if rate is None else w.poisson_arrivals(reqs, rate, seed=seed)

    kind = args.workload
    if kind == "sessions":
        lo, _, hi = args.turns.partition("-")
        sessions = [s.fit(args.max_model_len) for s in w.chat_sessions(
            n, turns=(int(lo), int(hi or lo)), system_tokens=args.system_tokens, seed=seed,
            vocab_size=vocab_size, max_user_tokens=args.max_prompt, max_reply_tokens=cap or 512)]
        starts = [0.0] * n if rate is None else [r.arrival for r in arrive(
            [s.request(0, []) for s in sessions])]
        return Workload.closed_loop(kind, sessions, starts)
    if kind == "long-document":
        reqs = w.long_document_replay(n_docs=n, doc_tokens=args.doc_tokens, seed=seed, vocab_size=vocab_size,
                                      question_tokens=args.question_tokens)
        return Workload.passes_by_tag(kind, [r for tag in ("cold", "warm")
                                             for r in arrive([q for q in reqs if q.tag == tag])])
    groups = max(1, n // args.prompts_per_group)
    reqs = {"sharegpt": lambda: w.sharegpt_like(n, seed=seed, vocab_size=vocab_size,
                                                max_prompt=args.max_prompt, max_total=args.max_total),
            "long-prompt": lambda: w.long_prompt_mix(n, seed=seed, vocab_size=vocab_size,
                                                     max_prompt=args.max_prompt),
            "shared-prefix": lambda: w.shared_prefix(
                groups=groups, prompts_per_group=args.prompts_per_group, system_tokens=args.system_tokens,
                question_tokens=args.question_tokens, output_tokens=args.output_tokens, seed=seed,
                vocab_size=vocab_size),
            "few-shot": lambda: w.few_shot(n, tasks=groups, header_tokens=args.system_tokens, seed=seed,
                                           question_tokens=args.question_tokens,
                                           output_tokens=args.output_tokens, vocab_size=vocab_size),
            "tree-of-thought": lambda: w.tree_of_thought(depth=args.depth, branching=args.branching,
                                                         root_tokens=args.system_tokens, seed=seed,
                                                         output_tokens=args.output_tokens,
                                                         vocab_size=vocab_size)}[kind]()
    return Workload.open_loop(kind, arrive(reqs))


def preset_names(names: list[str]) -> list[str]:
    """The names with ``all`` expanded to the six seed systems; unknown names raise."""
    from kvlab.bench import presets

    seeds = [p for p in presets.PRESETS if p not in ("custom", "static")]
    names = [n for p in names for n in (seeds if p == "all" else [p])]
    unknown = [p for p in names if p not in presets.PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; known: all, {', '.join(presets.PRESETS)}")
    return names


def preset_factory(name: str, fields: dict, *, kv_tokens: int, max_num_seqs: int, token_budget: int | None,
                   max_model_len: int):
    """A zero-argument callable building a fresh preset ``name`` with these fields (which win over
    the keyword defaults; a ``None`` token budget leaves the preset's own); an unknown field
    raises, naming the preset's fields."""
    from kvlab.bench import presets

    fn = presets.PRESETS[preset_names([name])[0]]
    accepted = inspect.signature(fn).parameters
    kwargs = {"kv_tokens": kv_tokens, "max_num_seqs": max_num_seqs, **fields}
    if token_budget is not None:
        kwargs.setdefault("token_budget", token_budget)
    for length in ("max_model_len", "max_seq_len"):     # custom's contiguous slots, static's
        if length in accepted:
            kwargs.setdefault(length, max_model_len)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"the {name} preset has no field(s) {unknown}; its fields: {', '.join(accepted)}")
    return lambda: fn(**kwargs)


def serve_presets(model, names: list[str], workload, console, *, fields: dict, kv_tokens: int,
                  max_num_seqs: int, token_budget: int | None, max_model_len: int, warmup: int,
                  point: dict | None = None, slo=None, **engine_kwargs):
    """Serve ``workload`` with each named preset (``kvlab.bench.compare.serve``), printing what a
    preset lacks; returns the table rows and {label: EngineRun} of every pass."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvlab.bench.compare import rows, serve

    point = point or {}
    table_rows, runs = [], {}
    for name in names:
        console.print(f"serving the {workload.name} workload with the {name} preset "
                      + " ".join(f"{k}={v}" for k, v in point.items()))
        make = preset_factory(name, fields, kv_tokens=kv_tokens, max_num_seqs=max_num_seqs,
                              token_budget=token_budget, max_model_len=max_model_len)
        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("requests"), TimeElapsedColumn(), console=console, transient=True,
                      disable=not console.is_terminal) as bar:          # a log gets no bar lines
            task = bar.add_task(name)

            def on_progress(stage, done, total, bar=bar, task=task):
                bar.update(task, description=stage, completed=done, total=total)

            preset, served = serve(model, make, workload, max_model_len=max_model_len, warmup=warmup,
                                   progress=on_progress, **engine_kwargs)
        for line in preset.missing:
            console.print(f"  [yellow]{name} lacks[/yellow]: {line}")
        table_rows += rows(name, served, point=point, slo=slo)
        for label, run in served:
            runs[" ".join([name, label, *(f"{k}={v}" for k, v in point.items())]).strip()] = run
    return table_rows, runs


def print_table(rows: list[dict], console, title: str, keys: list[str]) -> None:
    """A rich table: the ``keys`` columns as they are, then the serving metrics."""
    from rich.table import Table

    metrics = [("output_tokens_per_s", "output tok/s", "{:.1f}"), ("ttft_p50_s", "TTFT P50 (ms)", "ms"),
               ("ttft_p99_s", "TTFT P99 (ms)", "ms"), ("itl_p50_s", "ITL P50 (ms)", "ms"),
               ("itl_p99_s", "ITL P99 (ms)", "ms"), ("goodput_req_per_s", "goodput (req/s)", "{:.2f}"),
               ("preemptions", "preempt.", "{:.0f}"), ("compilations", "compiles", "{:.0f}"),
               ("hit_rate", "hit rate", "{:.1%}"),
               ("kv_usage_peak", "KV peak", "{:.0%}")]
    metrics = [m for m in metrics if m[0] in rows[0]]
    table = Table(title=title)
    for k in keys:
        table.add_column(k)
    for _, name, _ in metrics:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(*[str(r.get(k, "")) for k in keys],
                      *[(f"{1e3 * r[k]:.1f}" if fmt == "ms" else fmt.format(r[k])) for k, _, fmt in metrics])
    console.print(table)


def _plots(rows, runs, varied: list[str], out: pathlib.Path) -> None:
    from kvlab.bench import plots

    plots.plot_latencies({name: run.records for name, run in runs.items()}, out / "latencies.png")
    plots.plot_kv_usage(runs, out / "kv_usage.png")
    for x in [f for f in varied if all(isinstance(r[f], (int, float)) for r in rows)]:
        series = [{**r, "series": " ".join([r["preset"], r.get("pass", "")]
                                           + [f"{k}={r[k]}" for k in varied if k != x]).strip()}
                  for r in rows]
        for y in ("output_tokens_per_s", "ttft_p99_s", "itl_p99_s", "hit_rate"):
            plots.plot_sweep(series, x=x, y=y, hue="series", path=out / f"{y}_vs_{x}.png")


def run(args) -> int:
    import jax.numpy as jnp
    from rich.console import Console

    import kvlab
    from kvlab.bench import SLO
    from kvlab.bench.sweep import write_results

    console = Console(width=None if sys.stdout.isatty() else 200)     # a log keeps the whole table
    names = preset_names(args.preset)
    fixed = _assignments(args.set, many=False)
    grid = _assignments(getattr(args, "vary", []), many=True)
    if args.command == "sweep" and args.rates:
        grid.setdefault("rate", args.rates)
    if args.command == "sweep" and not grid:
        raise ValueError("kvlab sweep needs something to vary: --vary FIELD=V1,V2 or --rates R1,R2")
    fixed_rate = fixed.pop("rate", args.rate)
    slo = SLO(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot) if args.slo_ttft or args.slo_tpot else None
    model, _ = kvlab.models.load(args.model, dtype=jnp.dtype(args.dtype))
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    all_rows, runs = [], {}
    for point in points:
        workload = _workload(args, model.config.vocab_size, point.get("rate", fixed_rate))
        fields = {**fixed, **{k: v for k, v in point.items() if k != "rate"}}
        point_rows, point_runs = serve_presets(
            model, names, workload, console, fields=fields,
            kv_tokens=args.kv_tokens, max_num_seqs=args.max_num_seqs, token_budget=args.token_budget,
            max_model_len=args.max_model_len, warmup=args.warmup, point=point, slo=slo)
        all_rows += point_rows
        runs.update(point_runs)
    keys = ["preset", *grid] + (["pass"] if "pass" in all_rows[0] else [])
    print_table(all_rows, console, f"kvlab {args.command}: {workload.name} on {args.model}", keys)
    if args.out:
        out = pathlib.Path(args.out)
        write_results(all_rows, out)
        _plots(all_rows, runs, list(grid), out)
        console.print(f"results in {out}/ (results.csv, results.json, *.png)")
    return 0


def add_parsers(sub) -> None:
    for name, help_ in (("bench", "serve a workload with seed-system presets and compare them"),
                        ("sweep", "the same over a grid of fields (rate, kv_tokens, page_size, cache, ...)")):
        p = sub.add_parser(name, help=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--preset", type=lambda s: s.split(","), default=["vllm"],
                       help="comma-separated: vllm, sglang, tgi, lmdeploy, trtllm, deepspeed, static, "
                            "custom; or all (the six seed systems)")
        p.add_argument("--workload", choices=WORKLOADS, default="sharegpt")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="a preset field, e.g. page_size=32 (custom: cache=radix, scheduler=chunked, "
                            "policy=lpm, admission=reserve, preemption=swap)")
        if name == "bench":
            p.add_argument("--rate", type=float, default=None,
                           help="Poisson arrivals (req/s); default: all at once")
        else:
            p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2",
                           help="a field to vary (repeat for a grid), e.g. kv_tokens=4096,8192")
            p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None,
                           help="comma-separated Poisson rates (req/s), same as --vary rate=...")
            p.set_defaults(rate=None)
        p.add_argument("--num-requests", type=int, default=32, help="requests, sessions or documents")
        p.add_argument("--max-prompt", type=int, default=1024)
        p.add_argument("--max-total", type=int, default=2048)
        p.add_argument("--output-cap", type=int, default=0, help="cap every request's output (0: none)")
        p.add_argument("--prompts-per-group", type=int, default=8, help="shared-prefix / few-shot")
        p.add_argument("--system-tokens", type=int, default=512,
                       help="shared prefix: system prompt, few-shot header, tree root, session system")
        p.add_argument("--question-tokens", type=int, default=64)
        p.add_argument("--output-tokens", type=int, default=64)
        p.add_argument("--turns", default="2-6", help="sessions: turns per session, N or LO-HI (each "
                       "session ends early when its context would pass --max-model-len)")
        p.add_argument("--depth", type=int, default=3, help="tree-of-thought")
        p.add_argument("--branching", type=int, default=3, help="tree-of-thought")
        p.add_argument("--doc-tokens", type=int, default=1536,
                       help="long-document (TGI v3 uses ~10k; needs --max-model-len above it)")
        p.add_argument("--kv-tokens", type=int, default=16384, help="KV capacity given to every preset")
        p.add_argument("--max-num-seqs", type=int, default=32)
        p.add_argument("--token-budget", type=int, default=None,
                       help="tokens per step for every preset (default: each preset's own)")
        p.add_argument("--max-model-len", type=int, default=2048)
        p.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO (s) for goodput")
        p.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO (s) for goodput")
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--warmup", type=int, default=1,
                       help="the most warm-up passes before each measured run, stopping after one that "
                            "compiles nothing (a shape first met in the measured run is compiled off "
                            "its clock, and counted)")
        p.add_argument("--no-warmup", dest="warmup", action="store_const", const=0, help="--warmup 0")
        p.add_argument("--out", help="results folder (table and plots)")
