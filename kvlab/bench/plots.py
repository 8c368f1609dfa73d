"""PNG plots of benchmark results with matplotlib's object API (``Figure``, no pyplot state, no
display needed): latency CDFs and KV usage over time of engine runs, and any metric of a sweep
against one of its parameters.

Every figure has a title, axis labels with units and its legend outside the axes, right of them.
A series is named by its preset first (``"vllm"``, ``"sglang rate=4.0"``, ``"tgi warm"``): the
preset picks its colour from a fixed table (``PRESET_COLOURS``; other names get a colour from
their own letters), so a preset has one colour in every plot of a run and of every run; series of
one preset differ by line style. Per-step quantities (KV usage, hit rate) are step plots; a
latency CDF whose largest value is over 5x its median gets a log x axis (said in its label).
``run_figures`` builds all the figures of a ``kvlab bench`` / ``kvlab sweep`` run.

Examples:
    >>> import tempfile, pathlib
    >>> rows = [dict(preset=p, rate=r, output_tokens_per_s=r * k) for p, k in (("vllm", 1), ("tgi", 2))
    ...         for r in (1, 2, 4)]
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "tput.png"
    >>> plot_sweep(rows, x="rate", y="output_tokens_per_s", hue="preset", path=out).stat().st_size > 0
    True
    >>> fig = sweep_figure(rows, x="rate", y="output_tokens_per_s", hue="preset")
    >>> ax = fig.axes[0]
    >>> ax.get_xlabel(), [line.get_color() for line in ax.get_lines()] == [PRESET_COLOURS["vllm"], "#2ca02c"]
    ('arrival rate (requests/s)', True)
"""

from __future__ import annotations

import pathlib
import zlib

import numpy as np

PRESET_COLOURS = {"vllm": "#1f77b4", "sglang": "#ff7f0e", "tgi": "#2ca02c", "lmdeploy": "#d62728",
                  "trtllm": "#9467bd", "deepspeed": "#8c564b", "static": "#7f7f7f", "custom": "#e377c2"}
OTHER_COLOURS = ("#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
LINE_STYLES = ("-", "--", ":", "-.")
# field -> (axis label with its unit, factor from the stored value to the plotted one)
FIELD_LABELS = {
    "rate": ("arrival rate (requests/s)", 1.0), "kv_tokens": ("KV capacity (tokens)", 1.0),
    "token_budget": ("token budget (tokens/step)", 1.0), "max_num_seqs": ("max running sequences", 1.0),
    "page_size": ("page size (tokens)", 1.0), "block_tokens": ("block size (tokens)", 1.0),
    "tokens_per_block": ("block size (tokens)", 1.0), "host_tokens": ("host tier (tokens)", 1.0),
    "output_tokens_per_s": ("output throughput (tokens/s)", 1.0),
    "hit_rate": ("prefix hit rate (% of prompt tokens)", 100.0),
    "kv_usage_peak": ("peak KV usage (% of the pool)", 100.0)}
LATENCY_NAMES = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "end-to-end latency"}
LOG_SPREAD = 5.0            # a CDF whose max is this many times its median gets a log x axis


def preset_colour(series: str) -> str:
    """The colour of a series, from its first word (the preset)."""
    preset = str(series).split(" ")[0]
    return PRESET_COLOURS.get(preset) or OTHER_COLOURS[zlib.crc32(preset.encode()) % len(OTHER_COLOURS)]


def series_styles(names) -> dict[str, dict]:
    """{name: matplotlib line keywords}: the preset's colour, and a line style per series of one
    preset in the order given."""
    seen: dict[str, int] = {}
    out = {}
    for name in names:
        preset = str(name).split(" ")[0]
        out[name] = dict(color=preset_colour(preset), linestyle=LINE_STYLES[seen.get(preset, 0) % 4])
        seen[preset] = seen.get(preset, 0) + 1
    return out


def field_label(field: str) -> tuple[str, float]:
    """(axis label with unit, scale) of a row field: known fields from ``FIELD_LABELS``; a name
    ending in ``_s`` (seconds) is shown in ms; any other field as its name."""
    if field in FIELD_LABELS:
        return FIELD_LABELS[field]
    if field.endswith("_s"):
        words = [LATENCY_NAMES.get(w, w.upper() if w[:1] == "p" and w[1:].isdigit() else w)
                 for w in field[:-2].split("_")]
        return f"{' '.join(words)} (ms)", 1e3
    return field.replace("_", " "), 1.0


def _figure(ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * ncols + 2.4, 4.2), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _legend(fig, ax, title: str | None = None) -> None:
    """One legend for the figure, outside the axes on the right (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", title=title, framealpha=0.9, fontsize="small")


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _log_x(ax) -> None:
    """A log x axis with plain-number ticks at 1, 2 and 5 of each decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _cdf_axis(ax, series: list[np.ndarray], what: str, unit_of: str) -> None:
    """Labels of a latency CDF; a log x axis when one tail stretches it (max > LOG_SPREAD x median)."""
    pooled = np.concatenate(series) if series else np.zeros(0)
    log = pooled.size > 0 and pooled.min() > 0 and pooled.max() > LOG_SPREAD * np.median(pooled)
    if log:
        _log_x(ax)
    ax.set_xlabel(f"{what} (ms{', log scale' if log else ''})")
    ax.set_ylabel(f"{unit_of} at or below x (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3, which="both" if log else "major")


def latency_figure(runs: dict, *, title: str = "Latency distributions"):
    """TTFT and inter-token latency CDFs (ms) of named runs ({name: list of ``RequestRecord``},
    e.g. an ``EngineRun``'s ``records``), side by side; returns the ``Figure``."""
    fig, (ax_ttft, ax_itl) = _figure(2)
    styles = series_styles(runs)
    for ax, what, unit_of, values in (
            (ax_ttft, "time to first token", "requests", lambda recs: [r.ttft for r in recs]),
            (ax_itl, "inter-token latency", "token gaps", lambda recs: [x for r in recs for x in r.itls])):
        drawn = []
        for name, records in runs.items():
            xs = np.sort(np.asarray([x for x in values(records) if x is not None], float)) * 1e3
            if xs.size:              # from 0 at the smallest value up to 100% at the largest
                ax.step(np.r_[xs[0], xs], 100 * np.arange(xs.size + 1) / xs.size, where="post", label=name,
                        **styles[name])
                drawn.append(xs)
        _cdf_axis(ax, drawn, what, unit_of)
        ax.set_title(f"{what.capitalize()} CDF", fontsize="medium")
    fig.suptitle(title)
    _legend(fig, ax_ttft, title="run")
    return fig


def kv_usage_figure(runs: dict, *, title: str = "KV cache over time"):
    """KV pages in use (% of the pool) and the cache's prefix hit rate (cumulative, %) after each
    sampled step of named ``EngineRun`` s, as step plots against seconds from the run's start."""
    fig, (ax_use, ax_hit) = _figure(2)
    styles = series_styles(runs)
    for name, run in runs.items():
        t = [s.time for s in run.timeline]
        ax_use.step(t, [100 * s.usage for s in run.timeline], where="post", label=name, **styles[name])
        ax_hit.step(t, [100 * s.hit_rate for s in run.timeline], where="post", label=name, **styles[name])
    ax_use.set_ylabel("KV pages in use (% of the pool)")
    ax_use.set_title("KV usage", fontsize="medium")
    ax_hit.set_ylabel("prefix hit rate, cumulative (% of prompt tokens)")
    ax_hit.set_title("Prefix cache hits", fontsize="medium")
    for ax in (ax_use, ax_hit):
        ax.set_xlabel("time since the run's start (s)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _legend(fig, ax_use, title="run")
    return fig


def sweep_figure(rows: list[dict], *, x: str, y: str, hue: str | None, title: str | None = None,
                 logx: bool | None = None):
    """``y`` against ``x`` from sweep rows, one line per value of ``hue`` (a series name that starts
    with the preset); ``logx`` None: a log x axis when ``x`` spans 10x or more."""
    missing = [k for k in (x, y, hue) if k is not None and any(k not in r for r in rows)]
    if not rows or missing:
        raise ValueError(f"every row needs the fields {missing or [x, y]} to plot")
    (x_label, _), (y_label, y_scale) = field_label(x), field_label(y)
    fig, (ax,) = _figure()
    groups = list(dict.fromkeys(r[hue] for r in rows)) if hue else [y]
    styles = series_styles([str(g) for g in groups])
    for g in groups:
        pts = sorted((r[x], r[y]) for r in rows if hue is None or r[hue] == g)
        ax.plot([p[0] for p in pts], [y_scale * p[1] for p in pts], marker="o", label=str(g),
                **styles[str(g)])
    xs, top = sorted({r[x] for r in rows}), max(y_scale * r[y] for r in rows)
    if logx or (logx is None and min(xs) > 0 and max(xs) >= 10 * min(xs)):
        _log_x(ax)
        x_label += ", log scale"
    if len(xs) <= 8:                    # ticks at the grid's own values
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_ylim(0, 105 if y_scale == 100 else 1.08 * top or 1)  # from 0: no zoom that inflates a gap
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{y_label.split(' (')[0]} against {x_label.split(' (')[0]}")   # over the axes,
    # not the figure: a figure title centred over axes and legend together runs under the legend
    _legend(fig, ax, title=hue)
    return fig


def plot_latencies(runs: dict, path, **kwargs) -> pathlib.Path:
    """``latency_figure(runs, **kwargs)`` saved as a PNG at ``path``."""
    return _save(latency_figure(runs, **kwargs), path)


def plot_kv_usage(runs: dict, path, **kwargs) -> pathlib.Path:
    """``kv_usage_figure(runs, **kwargs)`` saved as a PNG at ``path``."""
    return _save(kv_usage_figure(runs, **kwargs), path)


def plot_sweep(rows: list[dict], *, path, **kwargs) -> pathlib.Path:
    """``sweep_figure(rows, **kwargs)`` saved as a PNG at ``path``."""
    return _save(sweep_figure(rows, **kwargs), path)


SWEEP_METRICS = ("output_tokens_per_s", "ttft_p99_s", "itl_p99_s", "hit_rate")


def run_figures(rows: list[dict], runs: dict, varied: list[str], *, subtitle: str = "") -> dict:
    """{file name: Figure} of one benchmark run: ``latencies.png`` and ``kv_usage.png`` of every
    ``EngineRun`` in ``runs`` ({series name: run}), and for each numeric varied field ``x`` the
    ``SWEEP_METRICS`` against it (``{y}_vs_{x}.png``), a line per preset, pass and other field."""
    tail = f": {subtitle}" if subtitle else ""
    figures = {} if not runs else {      # no engine runs (rows alone): no empty distributions
        "latencies.png": latency_figure({n: r.records for n, r in runs.items()},
                                        title=f"Latency distributions{tail}"),
        "kv_usage.png": kv_usage_figure(runs, title=f"KV cache over time{tail}")}
    for x in [f for f in varied if all(isinstance(r[f], (int, float)) for r in rows)]:
        series = [{**r, "run": " ".join(filter(None, [r["preset"], r.get("pass", ""),
                                                      *(f"{k}={r[k]}" for k in varied if k != x)]))}
                  for r in rows]
        for y in SWEEP_METRICS:
            what = f"{field_label(y)[0].split(' (')[0]} against {field_label(x)[0].split(' (')[0]}"
            what = what[0].upper() + what[1:]
            figures[f"{y}_vs_{x}.png"] = sweep_figure(series, x=x, y=y, hue="run",
                                                      title=f"{what}\n{subtitle}" if subtitle else what)
    return figures


def save_figures(figures: dict, folder) -> list[pathlib.Path]:
    """Every ``{file name: Figure}`` as a PNG in ``folder``."""
    return [_save(fig, pathlib.Path(folder) / name) for name, fig in figures.items()]
