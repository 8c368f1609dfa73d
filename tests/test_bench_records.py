"""Results that explain themselves: every file ``kvlab bench`` / ``kvlab sweep`` writes records the
whole configuration, the commands' help is complete, their defaults fit a CPU, and the plots of a
run are titled, labelled with units and give each preset one colour."""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import pathlib
import subprocess

import jax
import numpy as np
import pytest

from kvlab import cli_bench
from kvlab.bench.harness import CacheSample, EngineRun
from kvlab.bench.metrics import RequestRecord
from kvlab.bench.report import git_commit

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="kvlab")
    sub = parser.add_subparsers(dest="command")
    cli_bench.add_parsers(sub)
    return {name: sub.choices[name] for name in ("bench", "sweep")}


def _head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _check_common(config: dict, columns: dict, *, command: str, model: str) -> None:
    """The fields every results file has, in the JSON config and the CSV columns alike."""
    date = datetime.datetime.fromisoformat(config["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - date) < datetime.timedelta(minutes=30)
    device = jax.devices()[0]
    want = {"command": command, "date": config["date"], "model.name": model, "model.dtype": "float32",
            "device.kind": device.device_kind, "device.platform": device.platform,
            "jax.version": jax.__version__, "kvlab.version": importlib.metadata.version("kvlab"),
            "kvlab.git_commit": _head(), "workload.name": "shared-prefix", "workload.seed": 7,
            "workload.num_requests": 4, "workload.prompts_per_group": 2, "workload.system_tokens": 24,
            "workload.question_tokens": 4, "workload.output_tokens": 3, "settings.max_model_len": 128,
            "settings.warmup": 0, "settings.attention": "ReferenceAttention"}
    for key, value in want.items():
        assert columns[key] == ("" if value is None else str(value)), key
        section, _, field = key.partition(".")
        assert (config[section][field] if field else config[section]) == value, key
    assert "workload.depth" not in columns          # only the sizes the workload reads


def test_bench_and_sweep_files_record_the_whole_configuration(tmp_path):
    from test_model_parity import save_random_hf_model

    from kvlab.cli import main

    save_random_hf_model("llama2", tmp_path / "ckpt")
    model = str(tmp_path / "ckpt")
    common = ["--model", model, "--workload", "shared-prefix", "--num-requests", "4", "--seed", "7",
              "--prompts-per-group", "2", "--system-tokens", "24", "--question-tokens", "4",
              "--output-tokens", "3", "--kv-tokens", "1024", "--max-num-seqs", "4", "--token-budget", "64",
              "--max-model-len", "128", "--no-warmup"]
    assert main(["bench", "--preset", "vllm,deepspeed", "--set", "max_num_seqs=3", "--set", "rate=40",
                 *common, "--out", str(tmp_path / "b")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "b" / "results.csv")))
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    config, results = saved["config"], saved["results"]
    assert [r["preset"] for r in rows] == [r["preset"] for r in results] == ["vllm", "deepspeed"]
    for row in rows:
        _check_common(config, row, command="bench", model=model)
        assert (row["set.max_num_seqs"], row["set.rate"]) == ("3", "40")
        assert (row["workload.arrivals"], row["workload.rate"], row["workload.requests"]) == \
            ("poisson", "40", "4")
        assert (row["preset.max_num_seqs"], row["preset.kv_tokens"], row["preset.token_budget"]) == \
            ("3", "1024", "64")
    assert config["set"] == {"max_num_seqs": 3, "rate": 40} and config["vary"] == {}
    assert (rows[0]["preset.page_size"], rows[1]["preset.page_size"]) == ("16", "")   # vllm's own default
    assert (rows[0]["preset.block_tokens"], rows[1]["preset.block_tokens"]) == ("", "64")
    assert results[0]["preset.page_size"] == 16 and results[1]["preset.max_num_seqs"] == 3

    assert main(["sweep", "--preset", "sglang", "--rates", "50,100", "--vary", "max_num_seqs=2", *common,
                 "--out", str(tmp_path / "s")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    config = json.loads((tmp_path / "s" / "results.json").read_text())["config"]
    assert [(r["rate"], r["preset.max_num_seqs"]) for r in rows] == [("50.0", "2"), ("100.0", "2")]
    for row in rows:
        _check_common(config, row, command="sweep", model=model)
        assert (row["workload.arrivals"], row["workload.rate"]) == ("poisson", "")
        assert (row["vary.rate"], row["vary.max_num_seqs"]) == ("50.0,100.0", "2")
    assert config["vary"] == {"rate": [50.0, 100.0], "max_num_seqs": [2]} and config["set"] == {}


def test_git_commit_is_the_checkouts_or_none(tmp_path, monkeypatch):
    commit, dirty = git_commit()
    assert commit == _head() and (dirty is None) == (commit is None)
    assert git_commit(tmp_path / "kvlab" / "__init__.py") == (None, None)       # not a git checkout

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert git_commit() == (None, None)


def test_every_flag_has_help_with_its_default_and_no_markup():
    for name, parser in _parsers().items():
        text = parser.format_help()
        assert "``" not in text and ":class:" not in text, name
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help and action.help.strip(), f"{name} {action.option_strings}"
            if action.default is not argparse.SUPPRESS and action.option_strings != ["--no-warmup"]:
                assert "(default:" in parser._get_formatter()._expand_help(action) or \
                    "%(default)" in action.help, f"{name} {action.option_strings}"


@pytest.mark.parametrize("workload", cli_bench.WORKLOADS)
def test_default_sizes_fit_the_default_max_model_len(workload):
    """Every workload at the default sizes builds and fits ``--max-model-len`` (a CPU run needs no
    size flag), and the README's example stays small: a few hundred prompt tokens per request."""
    args = _parsers()["bench"].parse_args(["--workload", workload])
    args.command = "bench"
    built = cli_bench._workload(args, 49152, None)
    assert built.longest_request() <= args.max_model_len
    assert (args.kv_tokens, args.max_num_seqs, args.token_budget) == (4096, 8, 256)


def _run(ttfts, itls, usage) -> EngineRun:
    records = [RequestRecord(request_id=str(i), arrival=0.0, prompt_tokens=8,
                             token_times=tuple(np.cumsum([t, *itls]))) for i, t in enumerate(ttfts)]
    timeline = [CacheSample(time=0.1 * i, pages_used=u, pages_cached=0, pages_total=10, hit_rate=0.05 * i,
                            running=1, waiting=0) for i, u in enumerate(usage)]
    return EngineRun(records=records, rejected=[], timeline=timeline, hit_rate=0.3, kv_waste=0.1,
                     wall_s=1.0, steps=len(usage), compilations=0)


def test_plots_of_a_run_are_labelled_and_give_each_preset_one_colour():
    from kvlab.bench.plots import PRESET_COLOURS, run_figures

    runs, rows = {}, []
    for preset, slow in (("vllm", 1.0), ("sglang", 2.0)):
        for rate in (1.0, 4.0):
            itls = [0.01 * slow] * 5 + ([3.0] if preset == "sglang" else [])    # one outlier gap
            runs[f"{preset} rate={rate}"] = _run([0.05 * slow, 0.2 * slow], itls, [2, 5, 7, 3])
            rows.append({"preset": preset, "rate": rate, "output_tokens_per_s": 10 * rate / slow,
                         "ttft_p99_s": 0.2 * slow, "itl_p99_s": 0.01 * slow, "hit_rate": 0.3})
    figures = run_figures(rows, runs, ["rate"], subtitle="shared-prefix on tiny (float32, cpu)")
    assert set(figures) >= {"latencies.png", "kv_usage.png", "output_tokens_per_s_vs_rate.png",
                            "ttft_p99_s_vs_rate.png", "itl_p99_s_vs_rate.png", "hit_rate_vs_rate.png"}
    colours: dict[str, set] = {}
    for name, fig in figures.items():
        assert "shared-prefix on tiny" in fig.get_suptitle() + fig.axes[0].get_title(), name
        assert fig.legends and not any(ax.get_legend() for ax in fig.axes), name     # outside the axes
        for ax in fig.axes:
            assert len(fig.axes) == 1 or ax.get_title(), name                    # side by side: each named
            assert "(" in ax.get_xlabel() and "(" in ax.get_ylabel(), name       # units
            for line in ax.get_lines():
                colours.setdefault(line.get_label().split(" ")[0], set()).add(line.get_color())
                if name in ("latencies.png", "kv_usage.png"):
                    assert line.get_drawstyle() == "steps-post", name
    assert colours == {"vllm": {PRESET_COLOURS["vllm"]}, "sglang": {PRESET_COLOURS["sglang"]}}
    ttft_ax, itl_ax = figures["latencies.png"].axes
    assert itl_ax.get_xscale() == "log" and "log scale" in itl_ax.get_xlabel()       # the 3 s outlier
    assert ttft_ax.get_xscale() == "linear" and "ms" in ttft_ax.get_xlabel()
    styles = {line.get_label(): line.get_linestyle() for line in figures["kv_usage.png"].axes[0].get_lines()}
    assert styles["vllm rate=1.0"] != styles["vllm rate=4.0"]         # one preset: styles tell runs apart
    assert figures["hit_rate_vs_rate.png"].axes[0].get_ylim()[0] == 0
