"""Latency metrics of finished requests: TTFT, inter-token latency, throughput."""

from __future__ import annotations

import numpy as np

from kvlab.schedulers.request import Request


def ttft(request: Request) -> float | None:
    """Seconds from arrival to the first output token."""
    return request.token_times[0] - request.arrival_time if request.token_times else None


def inter_token_latencies(request: Request) -> list[float]:
    """Seconds between consecutive output tokens."""
    return list(np.diff(request.token_times)) if len(request.token_times) > 1 else []


def summarize(requests: list[Request], wall_seconds: float) -> dict[str, float]:
    """Aggregate metrics: TTFT and ITL mean/P50/P99 (ITL pooled over all gaps, as vLLM reports),
    output tokens/s over the wall time."""
    ttfts = [t for t in (ttft(r) for r in requests) if t is not None]
    itls = [x for r in requests for x in inter_token_latencies(r)]
    out_tokens = sum(len(r.output_token_ids) for r in requests)
    summary = {"requests": float(len(requests)), "output_tokens": float(out_tokens),
               "wall_s": wall_seconds,
               "output_tokens_per_s": out_tokens / wall_seconds if wall_seconds > 0 else 0.0,
               "preemptions": float(sum(r.num_preemptions for r in requests))}
    for name, xs in (("ttft", ttfts), ("itl", itls)):
        if xs:
            summary[f"{name}_mean_s"] = float(np.mean(xs))
            summary[f"{name}_p50_s"] = float(np.percentile(xs, 50))
            summary[f"{name}_p99_s"] = float(np.percentile(xs, 99))
    return summary
