"""Arrival processes: when each request of a trace is sent.

``poisson_arrivals`` (exponential gaps), ``gamma_arrivals`` (vLLM's benchmark burstiness: gamma
gaps with shape ``burstiness`` and the same mean, so ``burstiness=1`` is Poisson, lower is burstier
and higher is more regular) and ``all_at_once`` (an offline batch).

Examples:
    >>> from kvlab.workloads import sharegpt_like
    >>> reqs = gamma_arrivals(sharegpt_like(2000, seed=0), rate=10.0, burstiness=0.5, seed=0)
    >>> 180 < reqs[-1].arrival < 220            # 2000 requests at 10 req/s
    True
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvlab.workloads.synthetic import SyntheticRequest


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")


def _with_gaps(requests: list[SyntheticRequest], gaps: np.ndarray) -> list[SyntheticRequest]:
    """The first request at time 0, each next one a gap after the one before (vLLM's benchmark
    sends the first at once and waits after each)."""
    times = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    return [dataclasses.replace(r, arrival=float(t)) for r, t in zip(requests, times)]


def poisson_arrivals(requests: list[SyntheticRequest], rate: float, *, seed: int = 0
                     ) -> list[SyntheticRequest]:
    """The same requests arriving as a Poisson process of ``rate`` requests per second."""
    _check_rate(rate)
    return _with_gaps(requests, np.random.default_rng(seed).exponential(1.0 / rate, len(requests)))


def gamma_arrivals(requests: list[SyntheticRequest], rate: float, *, burstiness: float = 1.0,
                   seed: int = 0) -> list[SyntheticRequest]:
    """Gamma-distributed gaps with mean ``1 / rate`` and shape ``burstiness`` (coefficient of
    variation ``1 / sqrt(burstiness)``)."""
    _check_rate(rate)
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0 (1 is Poisson), got {burstiness}")
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), len(requests))
    return _with_gaps(requests, gaps)


def all_at_once(requests: list[SyntheticRequest]) -> list[SyntheticRequest]:
    """Every request at time 0 (offline throughput)."""
    return [dataclasses.replace(r, arrival=0.0) for r in requests]
