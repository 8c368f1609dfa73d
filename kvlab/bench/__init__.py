"""Benchmark helpers: serving metrics, host-side simulation of a scheduler and a cache with no
model, seed-system presets (``kvlab.bench.presets``), sweeps (``kvlab.bench.sweep``) and tables."""

from kvlab.bench.host_sim import LinearStepCost, SimResult, simulate
from kvlab.bench.metrics import SLO, RequestRecord, by_tag, describe, summarize
from kvlab.bench.report import markdown_table

__all__ = ["SLO", "LinearStepCost", "RequestRecord", "SimResult", "by_tag", "describe", "markdown_table",
           "simulate", "summarize"]
