"""Benchmark helpers: serving metrics, host-side simulation of a scheduler and a cache with no
model, a harness that drives a real engine with a workload on a clock (``kvlab.bench.harness``),
seed-system presets (``kvlab.bench.presets``), sweeps (``kvlab.bench.sweep``), tables and plots."""

from kvlab.bench.harness import CacheSample, EngineRun, run_sessions, run_workload
from kvlab.bench.heap import freeze_heap
from kvlab.bench.host_sim import LinearStepCost, SimResult, simulate
from kvlab.bench.metrics import SLO, RequestRecord, by_tag, describe, summarize
from kvlab.bench.report import markdown_table

__all__ = ["SLO", "CacheSample", "EngineRun", "LinearStepCost", "RequestRecord", "SimResult", "by_tag",
           "describe", "freeze_heap", "markdown_table", "run_sessions", "run_workload", "simulate",
           "summarize"]
