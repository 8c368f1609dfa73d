"""PNG plots of benchmark results with matplotlib's object API (``Figure``, no pyplot state, no
display needed): latency distributions and KV usage over time of engine runs, and any metric of a
sweep against one of its parameters.

Examples:
    >>> import tempfile, pathlib
    >>> rows = [dict(preset=p, rate=r, output_tokens_per_s=r * k) for p, k in (("a", 1), ("b", 2))
    ...         for r in (1, 2, 4)]
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "tput.png"
    >>> plot_sweep(rows, x="rate", y="output_tokens_per_s", hue="preset", path=out).stat().st_size > 0
    True
"""

from __future__ import annotations

import pathlib

import numpy as np


def _figure(ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * ncols, 4), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _cdf(ax, xs, label):
    xs = np.sort(np.asarray([x for x in xs if x is not None], float))
    if xs.size:
        ax.step(xs * 1e3, np.arange(1, xs.size + 1) / xs.size, where="post", label=label)


def plot_latencies(runs: dict, path) -> pathlib.Path:
    """TTFT and inter-token latency CDFs (ms) of named runs ({name: list of RequestRecord},
    e.g. an ``EngineRun``'s ``records``), side by side."""
    fig, (ax_ttft, ax_itl) = _figure(2)
    for name, records in runs.items():
        _cdf(ax_ttft, [r.ttft for r in records], name)
        _cdf(ax_itl, [x for r in records for x in r.itls], name)
    for ax, what in ((ax_ttft, "time to first token"), (ax_itl, "inter-token latency")):
        ax.set_xlabel(f"{what} (ms)")
        ax.set_ylabel("fraction of requests" if ax is ax_ttft else "fraction of tokens")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_kv_usage(runs: dict, path) -> pathlib.Path:
    """KV pages in use (fraction of the pool) and the prefix hit rate over time, of named
    ``EngineRun`` s."""
    fig, (ax_use, ax_hit) = _figure(2)
    for name, run in runs.items():
        t = [s.time for s in run.timeline]
        ax_use.plot(t, [s.usage for s in run.timeline], label=name)
        ax_hit.plot(t, [s.hit_rate for s in run.timeline], label=name)
    ax_use.set_ylabel("KV pages in use (fraction)")
    ax_hit.set_ylabel("prefix hit rate (cumulative)")
    for ax in (ax_use, ax_hit):
        ax.set_xlabel("time (s)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_sweep(rows: list[dict], *, x: str, y: str, hue: str | None, path, logx: bool = False
               ) -> pathlib.Path:
    """``y`` against ``x`` from sweep rows, one line per value of ``hue``."""
    missing = [k for k in (x, y, hue) if k is not None and any(k not in r for r in rows)]
    if not rows or missing:
        raise ValueError(f"every row needs the fields {missing or [x, y]} to plot")
    fig, (ax,) = _figure()
    groups = sorted({r[hue] for r in rows}, key=str) if hue else [None]
    for g in groups:
        pts = sorted((r[x], r[y]) for r in rows if hue is None or r[hue] == g)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(g) if hue else y)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(title=hue)
    return _save(fig, path)
