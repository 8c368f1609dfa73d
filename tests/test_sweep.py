"""Sweeps: grid order and size, clear errors, results on disk, and a sweep that shows what it should
(prefix hit rate grows with cache capacity)."""

from __future__ import annotations

import csv
import json

import pytest

from kvlab.bench import LinearStepCost
from kvlab.bench.metrics import SLO
from kvlab.bench.sweep import simulate_preset, sweep, write_results
from kvlab.workloads import poisson_arrivals, shared_prefix


def test_grid_order_size_and_errors():
    rows = sweep(lambda a, b, c: {"sum": a + b + c}, {"a": [1, 2], "b": [10, 20, 30]}, base={"c": 100},
                 progress=False)
    assert [(r["a"], r["b"]) for r in rows] == [(1, 10), (1, 20), (1, 30), (2, 10), (2, 20), (2, 30)]
    assert [r["sum"] for r in rows] == [111, 121, 131, 112, 122, 132]
    with pytest.raises(ValueError, match="both fixed in base and varied"):
        sweep(lambda a: {}, {"a": [1]}, base={"a": 2}, progress=False)
    with pytest.raises(ValueError, match="at least one value"):
        sweep(lambda a: {}, {"a": []}, progress=False)
    with pytest.raises(ValueError, match="unknown preset 'vlm'.*vllm"):
        simulate_preset(preset="vlm", requests=[], kv_tokens=16)


def test_hit_rate_grows_with_capacity_and_results_are_written(tmp_path):
    trace = shared_prefix(groups=8, prompts_per_group=4, system_tokens=512, question_tokens=16,
                          output_tokens=8, seed=3)
    reqs = poisson_arrivals(trace, rate=50.0, seed=3)
    rows = sweep(simulate_preset, {"preset": ["vllm", "sglang"], "kv_tokens": [2048, 16384]},
                 base=dict(requests=reqs, max_num_seqs=8, token_budget=512, slo=SLO(ttft_s=1.0),
                           step_cost=LinearStepCost(fixed_s=0.005, per_token_s=1e-5, per_kv_token_s=1e-7)),
                 progress=False)
    by = {(r["preset"], r["kv_tokens"]): r for r in rows}
    for name in ("vllm", "sglang"):
        assert by[(name, 16384)]["hit_rate"] > by[(name, 2048)]["hit_rate"]
        assert by[(name, 16384)]["requests"] == 32 and by[(name, 16384)]["ttft_p99_s"] > 0
        assert 0.0 <= by[(name, 16384)]["slo_attainment"] <= 1.0
    config = {"workload": {"name": "shared-prefix", "seed": 3, "rate": 50.0},
              "vary": {"kv_tokens": [2048, 16384]}}
    folder = write_results(rows, tmp_path / "out", config=config)
    with open(folder / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[0]["preset"] == "vllm"
    assert float(table[3]["hit_rate"]) == pytest.approx(rows[3]["hit_rate"])
    assert all((r["workload.seed"], r["workload.rate"], r["vary.kv_tokens"]) == ("3", "50.0", "2048,16384")
               for r in table)                                     # the configuration on every row
    saved = json.loads((folder / "results.json").read_text())
    assert saved["config"] == config and saved["results"][1]["kv_tokens"] == 16384
    with pytest.raises(ValueError, match="no rows"):
        write_results([], tmp_path / "empty")
