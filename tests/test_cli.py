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
