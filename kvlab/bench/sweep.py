"""Ablation sweeps: a base configuration, the fields to vary, one result row per grid point.

``sweep(run, grid, base=...)`` calls ``run(**params)`` for every combination of the grid's values
(with ``base`` filled in) and returns the rows: the parameters followed by the metrics ``run``
returned. ``simulate_preset`` is a ready-made ``run`` on the host simulator (no model, no device):
a preset, a workload and a step-cost model give the serving metrics of ``kvlab.bench.metrics``
and the cache's hit rate and memory waste. ``write_results`` saves rows as CSV and JSON, with the
run's configuration (``kvlab.bench.report.RunConfig``) beside them.

Examples:
    >>> from kvlab.workloads import shared_prefix
    >>> reqs = shared_prefix(groups=4, prompts_per_group=4, system_tokens=128, question_tokens=8,
    ...                      output_tokens=4, seed=0)
    >>> rows = sweep(simulate_preset, {"preset": ["vllm", "sglang"], "kv_tokens": [1024, 4096]},
    ...              base=dict(requests=reqs, max_num_seqs=8, token_budget=256), progress=False)
    >>> [(r["preset"], r["kv_tokens"]) for r in rows][:2], all(r["requests"] == 16 for r in rows)
    ([('vllm', 1024), ('vllm', 4096)], True)
"""

from __future__ import annotations

import csv
import itertools
import json
import pathlib

from kvlab.bench import metrics, presets
from kvlab.bench.host_sim import simulate
from kvlab.bench.report import flat_columns


def sweep(run, grid: dict[str, list], *, base: dict | None = None, progress: bool = True) -> list[dict]:
    """One row per point of the grid (the product of its value lists, in order): the varied
    parameters, then whatever ``run(**base, **point)`` returned (a flat dict)."""
    if not grid or any(not values for values in grid.values()):
        raise ValueError(f"the grid needs at least one field with at least one value, got {grid}")
    base = dict(base or {})
    clash = set(base) & set(grid)
    if clash:
        raise ValueError(f"fields both fixed in base and varied in the grid: {sorted(clash)}")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if progress:
        from rich.progress import track

        points_iter = track(points, description=f"sweep over {len(points)} points")
    else:
        points_iter = points
    return [{**point, **run(**base, **point)} for point in points_iter]


def simulate_preset(*, preset: str, requests, kv_tokens: int, step_cost=None, slo=None,
                    **preset_kwargs) -> dict[str, float]:
    """Serve ``requests`` with the named preset on the host simulator. With a ``step_cost`` the
    clock is simulated seconds (latencies, throughput); without one it counts steps."""
    if preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(presets.PRESETS))}")
    p = presets.PRESETS[preset](kv_tokens=kv_tokens, **preset_kwargs)
    result = simulate(p.scheduler, p.cache, requests, step_cost=step_cost)
    out = metrics.summarize(result.records(), wall_s=result.clock, slo=slo)
    s = result.stats
    out.update(steps=float(result.steps), hit_rate=s.hit_rate, kv_waste=s.memory.waste,
               host_ms_per_step=result.host_ms_per_step)
    return out


def write_results(rows: list[dict], folder, *, config: dict | None = None) -> pathlib.Path:
    """``results.csv`` and ``results.json`` in ``folder`` (created); returns the folder.

    ``config``: the run's configuration, a nested dict (``RunConfig.as_dict()``). The CSV has one
    row per result with the config's flat columns (``model.name``, ``workload.seed``, ...,
    ``kvlab.bench.report.flat_columns``) repeated on each; the columns are the union of the rows' keys
    (a field one preset lacks is an empty cell). The JSON is ``{"config": config, "results": rows}``;
    a value JSON has no type for (a preset's ``kv_format`` object) is written as its ``str``, as in the
    CSV."""
    if not rows:
        raise ValueError("no rows to write")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = flat_columns(config or {})
    table = [{**r, **columns} for r in rows]
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in table for k in r)))
        writer.writeheader()
        writer.writerows(table)
    (folder / "results.json").write_text(json.dumps({"config": config or {}, "results": rows}, indent=1,
                                                           default=str))
    return folder
