"""Serving metrics (``RequestRecord``, ``SLO``, ``summarize``, ``by_tag``): the engine's one
metrics module, ``kvlab.engine.metrics``, under the name the benchmark code uses."""

from kvlab.engine.metrics import PERCENTILES, SLO, RequestRecord, by_tag, describe, summarize

__all__ = ["PERCENTILES", "SLO", "RequestRecord", "by_tag", "describe", "summarize"]
