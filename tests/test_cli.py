"""The ``kvlab`` command on the bundled model."""

from __future__ import annotations

import re

from kvlab.cli import main


def test_generate_streams_text(capsys):
    assert main(["generate", "What is the capital of France?", "--max-tokens", "10"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_demo_prints_generations_and_metrics(capsys):
    assert main(["demo", "--num-prompts", "2", "--max-tokens", "8", "--prefix-caching",
                 "--compare", "none"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "throughput (output tok/s)" in out and "TTFT" in out
    compiles = re.search(r"timed run\)\W+(\d+) / (\d+)", out)
    assert compiles and int(compiles.group(1)) > 0 and compiles.group(2) == "0"
    hits = re.search(r"prefix hit rate \(all runs\) / pages cached\W+([\d.]+)%", out)
    assert hits and float(hits.group(1)) > 30      # the system prompt and both prompts, reused


def test_demo_compares_presets_on_a_shared_prefix_workload(capsys):
    """The demo's preset comparison on the bundled model (small): a row per preset, prefix hits
    for the prefix-caching composition and none for the static baseline's contiguous cache."""
    assert main(["demo", "--num-prompts", "1", "--max-tokens", "2", "--compare", "sglang,static",
                 "--compare-groups", "1", "--compare-system-tokens", "48", "--compare-output-tokens", "3",
                 "--compare-token-budget", "80"]) == 0
    out = capsys.readouterr().out
    assert "presets compared" in out and "static lacks" in out
    hit = {name: float(m) for name, m in re.findall(r"│ (sglang|static) .*│\s+([\d.]+)% │\s+\d+% │", out)}
    assert hit["sglang"] > 30 and hit["static"] == 0, out[-2000:]


def test_cli_reports_bad_input(capsys):
    assert main(["generate", "hi", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["demo", "--compare", "vllm,nosuch"]) == 2
    assert "unknown preset(s) ['nosuch']; known: all, vllm" in capsys.readouterr().err


def test_bench_and_sweep_write_tables_and_plots(tmp_path, capsys):
    """``kvlab bench`` / ``kvlab sweep`` on a tiny random checkpoint: a row per preset (and rate),
    what a preset lacks printed, CSV/JSON and PNGs written."""
    import csv

    from test_model_parity import save_random_hf_model

    save_random_hf_model("llama2", tmp_path / "ckpt")
    common = ["--model", str(tmp_path / "ckpt"), "--workload", "shared-prefix", "--num-requests", "4",
              "--prompts-per-group", "2", "--system-tokens", "24", "--question-tokens", "4",
              "--output-tokens", "3", "--kv-tokens", "1024", "--max-num-seqs", "4", "--token-budget", "64",
              "--max-model-len", "128", "--no-warmup"]
    assert main(["bench", "--preset", "vllm,deepspeed", *common, "--out", str(tmp_path / "b"),
                 "--slo-e2e", "1000"]) == 0
    out = capsys.readouterr().out
    assert "deepspeed lacks" in out and "kvlab bench" in out
    rows = list(csv.DictReader(open(tmp_path / "b" / "results.csv")))
    assert [r["preset"] for r in rows] == ["vllm", "deepspeed"]
    assert all(float(r["requests"]) == 4 and float(r["output_tokens_per_s"]) > 0 for r in rows)
    assert all(float(r["slo_attainment"]) == 1.0 for r in rows)          # an e2e bound of 1000 s
    assert (tmp_path / "b" / "latencies.png").stat().st_size > 0
    assert (tmp_path / "b" / "kv_usage.png").stat().st_size > 0
    sweep_out = str(tmp_path / "s")
    assert main(["sweep", "--preset", "sglang", "--rates", "50,100", *common, "--out", sweep_out]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    assert [float(r["rate"]) for r in rows] == [50.0, 100.0]
    assert (tmp_path / "s" / "output_tokens_per_s_vs_rate.png").stat().st_size > 0
    assert main(["bench", "--preset", "nosuch", *common]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_sweep_over_parts_and_fields_and_other_workloads(tmp_path, capsys):
    """``--vary`` over a custom composition's parts and a capacity, ``--set`` of a part, the
    closed-loop sessions and the cold/warm long-document passes; unknown fields name the allowed."""
    import csv

    from test_model_parity import save_random_hf_model

    save_random_hf_model("llama2", tmp_path / "ckpt")
    common = ["--model", str(tmp_path / "ckpt"), "--num-requests", "2", "--max-num-seqs", "4",
              "--token-budget", "64", "--max-model-len", "256", "--output-cap", "3", "--no-warmup"]
    out = tmp_path / "grid"
    assert main(["sweep", "--preset", "custom", "--workload", "shared-prefix", "--prompts-per-group", "2",
                 "--system-tokens", "32", "--question-tokens", "4", "--vary", "cache=paged,radix",
                 "--vary", "kv_tokens=1024", "--set", "policy=lpm", "--set", "page_size=8", *common,
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["cache"], r["kv_tokens"]) for r in rows] == [("paged", "1024"), ("radix", "1024")]
    assert all(float(r["requests"]) == 2 for r in rows)
    assert (out / "hit_rate_vs_kv_tokens.png").stat().st_size > 0
    assert main(["bench", "--preset", "vllm", "--workload", "long-document", "--doc-tokens", "96",
                 "--question-tokens", "8", *common, "--out", str(tmp_path / "doc")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "doc" / "results.csv")))
    assert [r["pass"] for r in rows] == ["cold", "warm"]
    assert float(rows[0]["hit_rate"]) < 0.2 < 0.7 < float(rows[1]["hit_rate"])   # the documents, reused
    assert main(["bench", "--preset", "tgi", "--workload", "sessions", "--turns", "2",
                 "--system-tokens", "16", "--max-prompt", "24", *common,
                 "--out", str(tmp_path / "chat")]) == 0
    [row] = list(csv.DictReader(open(tmp_path / "chat" / "results.csv")))
    assert float(row["requests"]) == 4 and float(row["hit_rate"]) > 0      # 2 turns each, history reused
    capsys.readouterr()
    assert main(["bench", "--preset", "vllm", "--set", "cache=radix", *common]) == 2
    assert "the vllm preset has no field(s) ['cache']" in capsys.readouterr().err
    assert main(["bench", "--preset", "custom", "--set", "cache=ring", *common]) == 2
    assert "unknown cache 'ring'; known: paged, blocked, radix, contiguous" in capsys.readouterr().err
    assert main(["sweep", "--preset", "vllm", *common]) == 2
    assert "needs something to vary" in capsys.readouterr().err


def test_bench_fails_loudly_when_a_preset_serves_nothing(capsys):
    """A preset whose cache cannot hold any request measured nothing: an error, not a table of
    zeros (it used to exit 0 with 0 tok/s and the rejections only in results.json)."""
    assert main(["bench", "--preset", "vllm", "--set", "kv_tokens=100", "--set", "page_size=64",
                 "--num-requests", "3", "--no-warmup"]) == 2
    err = capsys.readouterr().err
    assert "the vllm run rejected all 3 requests" in err and "alone fills this cache" in err
