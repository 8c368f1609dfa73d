"""The ``kvlab`` command on the bundled model."""

from __future__ import annotations

import re

from kvlab.cli import main


def test_generate_streams_text(capsys):
    assert main(["generate", "What is the capital of France?", "--max-tokens", "10"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_demo_prints_generations_and_metrics(capsys):
    assert main(["demo", "--num-prompts", "2", "--max-tokens", "8", "--prefix-caching"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "throughput (output tok/s)" in out and "TTFT" in out
    compiles = re.search(r"timed run\)\W+(\d+) / (\d+)", out)
    assert compiles and int(compiles.group(1)) > 0 and compiles.group(2) == "0"
    hits = re.search(r"prefix hit rate \(all runs\) / pages cached\W+([\d.]+)%", out)
    assert hits and float(hits.group(1)) > 30      # the system prompt and both prompts, reused


def test_cli_reports_bad_input(capsys):
    assert main(["generate", "hi", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err


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
    assert main(["bench", "--preset", "vllm,deepspeed", *common, "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "deepspeed lacks" in out and "kvlab bench" in out
    rows = list(csv.DictReader(open(tmp_path / "b" / "results.csv")))
    assert [r["preset"] for r in rows] == ["vllm", "deepspeed"]
    assert all(float(r["requests"]) == 4 and float(r["output_tokens_per_s"]) > 0 for r in rows)
    assert (tmp_path / "b" / "latencies.png").stat().st_size > 0
    assert (tmp_path / "b" / "kv_usage.png").stat().st_size > 0
    sweep_out = str(tmp_path / "s")
    assert main(["sweep", "--preset", "sglang", "--rates", "50,100", *common, "--out", sweep_out]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    assert [float(r["rate"]) for r in rows] == [50.0, 100.0]
    assert (tmp_path / "s" / "output_tokens_per_s_vs_rate.png").stat().st_size > 0
    assert main(["bench", "--preset", "nosuch", *common]) == 2
    assert "unknown preset" in capsys.readouterr().err
