"""``kvlab bench`` and ``kvlab sweep``: serve a workload with seed-system presets (or a ``custom``
composition) on a real model and clock, print the comparison, and write a results folder with the
table (CSV/JSON, each with the run's whole configuration, ``kvlab.bench.report.RunConfig``) and
PNG plots.

``--set FIELD=VALUE`` fixes a preset field (``page_size=32``, ``cache=radix`` for ``custom``);
``kvlab sweep --vary FIELD=V1,V2`` varies one (repeat it for a grid). ``rate`` is a field too.
The default sizes serve a small workload on a CPU in a few minutes; the help of each size says
what to give on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import itertools
import pathlib
import sys

from kvlab.bench.report import print_table  # noqa: F401  (``kvlab demo`` imports it from here)
from kvlab.cli_types import check_count, int_in, report_rejections

# workload -> the size flags it reads (besides --seed, --rate and --output-cap)
WORKLOAD_SIZES = {
    "sharegpt": ("num_requests", "max_prompt", "max_total"),
    "shared-prefix": ("num_requests", "prompts_per_group", "system_tokens", "question_tokens",
                      "output_tokens"),
    "long-prompt": ("num_requests", "max_prompt"),
    "few-shot": ("num_requests", "prompts_per_group", "system_tokens", "question_tokens", "output_tokens"),
    "tree-of-thought": ("depth", "branching", "system_tokens", "output_tokens"),
    "sessions": ("num_requests", "turns", "system_tokens", "max_prompt"),
    "long-document": ("num_requests", "doc_tokens", "question_tokens"),
}
WORKLOADS = tuple(WORKLOAD_SIZES)


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


def preset_fields(name: str, fields: dict, *, kv_tokens: int, max_num_seqs: int, token_budget: int | None,
                  max_model_len: int) -> tuple[dict, dict]:
    """(the keyword arguments given to preset ``name``, all its fields with their values): ``fields``
    win over the keyword defaults, a ``None`` token budget leaves the preset's own, and the second
    dict adds the preset's own defaults for the rest. An unknown field raises, naming the preset's."""
    from kvlab.bench import presets

    fn = presets.PRESETS[presets.expand_names([name])[0]]
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
    for field, value in kwargs.items():
        check_count(name, field, value, accepted[field])
    every = {k: kwargs.get(k, p.default) for k, p in accepted.items()}
    return kwargs, {k: v for k, v in every.items() if v is not inspect.Parameter.empty}


def preset_factory(name: str, fields: dict, **sizes):
    """A zero-argument callable building a fresh preset ``name`` with these fields (``preset_fields``
    takes the same arguments)."""
    from kvlab.bench import presets

    kwargs, _ = preset_fields(name, fields, **sizes)
    fn = presets.PRESETS[presets.expand_names([name])[0]]
    return lambda: fn(**kwargs)


def serve_presets(model, names: list[str], workload, console, *, fields: dict, kv_tokens: int,
                  max_num_seqs: int, token_budget: int | None, max_model_len: int, warmup: int,
                  point: dict | None = None, slo=None, **engine_kwargs):
    """Serve ``workload`` with each named preset (``kvlab.bench.compare.serve``), printing what a
    preset lacks; returns the table rows (each ending with every field of its preset, given or
    default, as ``preset.FIELD``) and {label: EngineRun} of every pass."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvlab.bench.compare import rows, serve

    point = point or {}
    table_rows, runs = [], {}
    for name in names:
        console.print(f"serving the {workload.name} workload with the {name} preset "
                      + " ".join(f"{k}={v}" for k, v in point.items()))
        sizes = dict(kv_tokens=kv_tokens, max_num_seqs=max_num_seqs, token_budget=token_budget,
                     max_model_len=max_model_len)
        make, every = preset_factory(name, fields, **sizes), preset_fields(name, fields, **sizes)[1]
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
        for label, run in served:
            report_rejections(" ".join(filter(None, [name, label])), run, console)
        table_rows += [{**r, **{f"preset.{k}": v for k, v in every.items()}}
                       for r in rows(name, served, point=point, slo=slo)]
        for label, run in served:
            runs[" ".join(filter(None, [name, label, *(f"{k}={v}" for k, v in point.items())]))] = run
    return table_rows, runs


def run(args) -> int:
    import jax.numpy as jnp
    from rich.console import Console

    import kvlab
    from kvlab.bench import SLO, presets
    from kvlab.bench.report import run_config
    from kvlab.bench.sweep import write_results

    console = Console(width=None if sys.stdout.isatty() else 200)     # a log keeps the whole table
    names = presets.expand_names(args.preset)
    fixed = _assignments(args.set, many=False)
    grid = _assignments(getattr(args, "vary", []), many=True)
    if args.command == "sweep" and args.rates:
        grid.setdefault("rate", args.rates)
    if args.command == "sweep" and not grid:
        raise ValueError("kvlab sweep needs something to vary: --vary FIELD=V1,V2 or --rates R1,R2")
    fixed_rate = fixed.get("rate", args.rate)
    fields = {k: v for k, v in fixed.items() if k != "rate"}
    bounds = dict(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot, e2e_s=args.slo_e2e)
    slo = SLO(**bounds) if any(b is not None for b in bounds.values()) else None
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    for point in points:              # every preset's fields checked before anything is served
        for name in names:
            preset_fields(name, {**fields, **{k: v for k, v in point.items() if k != "rate"}},
                          kv_tokens=args.kv_tokens, max_num_seqs=args.max_num_seqs,
                          token_budget=args.token_budget or None, max_model_len=args.max_model_len)
    model, _ = kvlab.models.load(args.model, dtype=jnp.dtype(args.dtype))
    all_rows, runs, config = [], {}, None
    for point in points:
        workload = _workload(args, model.config.vocab_size, point.get("rate", fixed_rate))
        config = config or run_config(args, fixed=fixed, grid=grid, workload=workload,
                                      sizes=WORKLOAD_SIZES[args.workload])
        point_rows, point_runs = serve_presets(
            model, names, workload, console,
            fields={**fields, **{k: v for k, v in point.items() if k != "rate"}},
            kv_tokens=args.kv_tokens, max_num_seqs=args.max_num_seqs, token_budget=args.token_budget or None,
            max_model_len=args.max_model_len, warmup=args.warmup, point=point, slo=slo)
        all_rows += point_rows
        runs.update(point_runs)
    keys = ["preset", *grid] + (["pass"] if "pass" in all_rows[0] else [])
    print_table(all_rows, console, f"kvlab {args.command}: {workload.name} on {args.model}", keys)
    if args.out:
        from kvlab.bench.plots import run_figures, save_figures

        out = pathlib.Path(args.out)
        write_results(all_rows, out, config=config.as_dict())
        device = config.env["device"]
        subtitle = (f"{args.workload} on {pathlib.Path(args.model).name} ({args.dtype}, "
                    f"{device['kind']})")
        save_figures(run_figures(all_rows, runs, list(grid), subtitle=subtitle), out)
        console.print(f"results in {out}/ (results.csv, results.json, *.png)")
    return 0


GPU = "; on a GPU: "          # each size flag's help ends with the size a GPU run would use


def add_parsers(sub) -> None:
    """The ``bench`` and ``sweep`` subcommands (every flag with its help and default)."""
    for name, help_ in (("bench", "serve a workload with seed-system presets and compare them"),
                        ("sweep", "the same over a grid of fields (rate, kv_tokens, page_size, cache, ...)")):
        p = sub.add_parser(name, help=help_, description=help_ + ". The default sizes finish in a few "
                           "minutes on a CPU; each size's help says what to give on a GPU.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--preset", type=lambda s: s.split(","), default="vllm",
                       help="comma-separated: vllm, sglang, tgi, lmdeploy, trtllm, deepspeed, static, "
                            "custom; or all (the six seed systems)")
        p.add_argument("--workload", choices=WORKLOADS, default="sharegpt", help="the request trace")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="a preset field, e.g. page_size=32 (custom: cache=radix, scheduler=chunked, "
                            "policy=lpm, admission=reserve, preemption=swap); repeat for more")
        if name == "bench":
            p.add_argument("--rate", type=float, default=None,
                           help="Poisson arrival rate (requests/s); none: every request at time 0")
        else:
            p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2",
                           help="a field to vary (repeat for a grid), e.g. kv_tokens=4096,8192")
            p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None,
                           help="comma-separated Poisson rates (requests/s), same as --vary rate=...")
            p.set_defaults(rate=None)
        p.add_argument("--num-requests", type=int_in(1), default=8,
                       help=f"requests, sessions or documents{GPU}256 or more")
        p.add_argument("--max-prompt", type=int_in(1), default=512,
                       help=f"longest prompt (tokens): sharegpt, long-prompt, a session's user turn"
                            f"{GPU}1024+")
        p.add_argument("--max-total", type=int_in(1), default=1024,
                       help=f"sharegpt: longest prompt + output (tokens){GPU}2048")
        p.add_argument("--output-cap", type=int_in(0), default=0,
                       help="cap every request's output (tokens; 0: none)")
        p.add_argument("--prompts-per-group", type=int_in(1), default=4,
                       help="shared-prefix / few-shot: requests per shared prefix")
        p.add_argument("--system-tokens", type=int_in(0), default=128,
                       help="shared prefix (tokens): system prompt, few-shot header, tree root, session "
                            f"system{GPU}512-2048")
        p.add_argument("--question-tokens", type=int_in(1), default=32,
                       help=f"the part after the shared prefix (tokens){GPU}64-128")
        p.add_argument("--output-tokens", type=int_in(1), default=16,
                       help="shared-prefix, few-shot, tree-of-thought: output per request (tokens)"
                            f"{GPU}64-256")
        p.add_argument("--turns", default="2-4", help="sessions: turns per session, N or LO-HI (each "
                       "session ends early when its context would pass --max-model-len)")
        p.add_argument("--depth", type=int_in(1), default=3, help="tree-of-thought: levels of the tree")
        p.add_argument("--branching", type=int_in(1), default=3, help="tree-of-thought: children per node")
        p.add_argument("--doc-tokens", type=int_in(1), default=384,
                       help=f"long-document: tokens per document{GPU}10000 (TGI v3's, with --max-model-len "
                            "above it)")
        p.add_argument("--kv-tokens", type=int_in(1), default=4096,
                       help=f"KV capacity given to every preset (tokens){GPU}16384 or more")
        p.add_argument("--max-num-seqs", type=int_in(1), default=8,
                       help=f"most sequences running at once, every preset{GPU}32-256")
        p.add_argument("--token-budget", type=int_in(0), default=256,
                       help=f"tokens per step for every preset; 0: each preset's own (2048-8192){GPU}0")
        p.add_argument("--max-model-len", type=int_in(1), default=1024,
                       help=f"longest sequence (prompt + output, tokens){GPU}2048 or more")
        p.add_argument("--slo-ttft", type=float, default=None,
                       help="TTFT SLO for goodput, in seconds (vLLM's --goodput takes ms)")
        p.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO for goodput, in seconds")
        p.add_argument("--slo-e2e", type=float, default=None,
                       help="end-to-end latency SLO for goodput, in seconds")
        p.add_argument("--model", default="smollm2-135m",
                       help="bundled name, local transformers directory or .gguf file")
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="weights and KV dtype (bfloat16 on a GPU)")
        p.add_argument("--seed", type=int, default=0, help="seed of the workload and its arrivals")
        p.add_argument("--warmup", type=int_in(0), default=1,
                       help="the most warm-up passes before each measured run, stopping after one that "
                            "compiles nothing (a shape first met in the measured run is compiled off "
                            "its clock, and counted)")
        p.add_argument("--no-warmup", dest="warmup", action="store_const", const=0, default=argparse.SUPPRESS,
                       help="the same as --warmup 0")
        p.add_argument("--out", help="results folder: results.csv, results.json (each with the run's whole "
                                     "configuration) and PNG plots; none: the table is only printed")
