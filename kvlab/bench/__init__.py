"""Benchmark helpers: host-side simulation of a scheduler and a cache with no model, and tables."""

from kvlab.bench.host_sim import LinearStepCost, SimResult, simulate
from kvlab.bench.report import markdown_table

__all__ = ["LinearStepCost", "SimResult", "markdown_table", "simulate"]
