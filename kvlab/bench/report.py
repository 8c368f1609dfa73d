"""Result tables and the record of how they were made.

``markdown_table`` renders rows of dicts as Markdown, the form docs/benchmarks.md records.
``RunConfig`` is everything a results file needs to explain itself (the command, model, dtype,
workload with its sizes, seed and arrival rate, the fields given and varied, the date, device and
software versions); ``flat_columns`` turns it (or any nested dict) into the flat ``a.b`` column
names a CSV row repeats; ``print_table`` prints serving rows on a console.

Examples:
    >>> print(markdown_table([{"cache": "paged", "waste": 0.015, "steps": 4044}], {"waste": ".1%"}))
    | cache | waste | steps |
    |---|---|---|
    | paged | 1.5% | 4044 |
    >>> flat_columns({"model": {"name": "smollm2-135m"}, "vary": {"rate": [1.0, 2.0]}})
    {'model.name': 'smollm2-135m', 'vary.rate': '1.0,2.0'}
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import pathlib
import subprocess


def markdown_table(rows: list[dict], formats: dict[str, str] | None = None, float_format: str = "") -> str:
    """One row per dict (keys of the first row as columns); ``formats`` by column, else
    ``float_format`` for floats."""
    formats = formats or {}
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [format(r[k], formats[k]) if k in formats else
                 format(r[k], float_format) if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flat_columns(nested: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and tuples become comma-joined strings (one CSV
    cell); other values stay as they are (``None`` is an empty CSV cell)."""
    out = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_columns(value, f"{name}."))
        else:
            out[name] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return out


def git_commit(path=None) -> tuple[str | None, bool | None]:
    """(HEAD commit, uncommitted changes to tracked files) of the git checkout whose top folder
    holds the package at ``path`` (default: kvlab's own folder); (None, None) when it is not such a
    checkout (an installed wheel, no ``git`` on the PATH, a folder git refuses). Never raises."""
    if path is None:
        import kvlab

        path = kvlab.__file__
    package = pathlib.Path(path).resolve()
    package = package if package.is_dir() else package.parent

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=package, capture_output=True, text=True, timeout=20,
                              check=True).stdout

    try:
        top, commit = git("rev-parse", "--show-toplevel", "HEAD").split()
        if pathlib.Path(top).resolve() != package.parent:     # kvlab installed inside another repo
            return None, None
        return commit, bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None, None


def environment() -> dict:
    """Where and when a run happens: UTC date (ISO 8601), kvlab version and git commit, JAX
    version, and the first device's kind and platform (with the device count)."""
    import jax

    try:
        version = importlib.metadata.version("kvlab")
    except importlib.metadata.PackageNotFoundError:
        version = None
    commit, dirty = git_commit()
    device = jax.devices()[0]
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "kvlab": {"version": version, "git_commit": commit, "git_dirty": dirty},
            "jax": {"version": jax.__version__},
            "device": {"kind": device.device_kind, "platform": device.platform, "count": jax.device_count()}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The configuration of a benchmark run, common to all its rows (what varies by row, such as
    each preset's resolved fields, goes in the rows). ``workload``: name, seed, arrivals
    ("poisson" or "all at once"), rate (requests/s; None when all at once or varied), request
    count and the sizes the workload reads (tokens, counts); ``settings``: engine and measurement
    settings (max_model_len in tokens, warm-up passes, SLO bounds in seconds, attention backend);
    ``fields``: the preset fields given (``--set``); ``grid``: the fields varied, with their
    values; ``env``: ``environment()`` (filled in when left out)."""

    command: str
    model: str
    dtype: str
    workload: dict
    settings: dict = dataclasses.field(default_factory=dict)
    fields: dict = dataclasses.field(default_factory=dict)
    grid: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=environment)

    def as_dict(self) -> dict:
        """Nested and JSON-ready: {"command", "date", "kvlab", "jax", "device", "model",
        "workload", "settings", "set", "vary"}."""
        env = dict(self.env)
        return {"command": self.command, "date": env.pop("date", None), **env,
                "model": {"name": self.model, "dtype": self.dtype}, "workload": dict(self.workload),
                "settings": dict(self.settings), "set": dict(self.fields), "vary": dict(self.grid)}

    def columns(self) -> dict:
        """``flat_columns(self.as_dict())``: the CSV columns repeated on every row."""
        return flat_columns(self.as_dict())


def run_config(args, *, fixed: dict, grid: dict, workload, sizes: tuple[str, ...]) -> RunConfig:
    """The ``RunConfig`` of a ``kvlab bench`` / ``kvlab sweep`` invocation: its parsed ``args``, the
    ``--set`` fields (``fixed``, rate included), the ``grid``, the ``kvlab.bench.compare.Workload`` of
    its first point (for the request count) and the names of the size flags its workload reads."""
    from kvlab.attention.select import default_attention

    rate = None if "rate" in grid else fixed.get("rate", args.rate)
    count = ({"sessions": len(workload.sessions)} if workload.sessions
             else {"requests": sum(len(reqs) for _, reqs in workload.passes)})
    return RunConfig(
        command=args.command, model=args.model, dtype=args.dtype,
        workload={"name": args.workload, "seed": args.seed,
                  "arrivals": "all at once" if rate is None and "rate" not in grid else "poisson",
                  "rate": rate, **count, **{f: getattr(args, f) for f in sizes},
                  "output_cap": args.output_cap or None},
        settings={"max_model_len": args.max_model_len, "warmup": args.warmup, "slo_ttft_s": args.slo_ttft,
                  "slo_tpot_s": args.slo_tpot, "slo_e2e_s": args.slo_e2e,
                  "attention": type(default_attention()).__name__},
        fields=dict(fixed), grid=dict(grid))


def print_table(rows: list[dict], console, title: str, keys: list[str]) -> None:
    """A rich table: the ``keys`` columns as they are, then the serving metrics (latencies in ms)."""
    from rich.table import Table

    metrics = [("output_tokens_per_s", "output tok/s", "{:.1f}"), ("ttft_p50_s", "TTFT P50 (ms)", "ms"),
               ("ttft_p99_s", "TTFT P99 (ms)", "ms"), ("itl_p50_s", "ITL P50 (ms)", "ms"),
               ("itl_p99_s", "ITL P99 (ms)", "ms"), ("goodput_req_per_s", "goodput (req/s)", "{:.2f}"),
               ("preemptions", "preempt.", "{:.0f}"), ("compilations", "compiles", "{:.0f}"),
               ("hit_rate", "hit rate", "{:.1%}"), ("kv_usage_peak", "KV peak", "{:.0%}")]
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
