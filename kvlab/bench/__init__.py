"""Benchmark helpers: host-side simulation of a scheduler and a cache with no model."""

from kvlab.bench.host_sim import SimResult, simulate

__all__ = ["SimResult", "simulate"]
