"""Serving metrics of a finished run, with the definitions the serving benchmarks use.

Per request (``RequestRecord``):
  * TTFT: first output token time - arrival time;
  * inter-token latencies (ITL): gaps between consecutive arrivals of output tokens; tokens that
    arrive together (a multi-step plan's burst, stamped with one time) are one arrival, as a
    streaming client sees them (vLLM's benchmark records one gap per streamed chunk);
  * TPOT: (last token time - first token time) / (output tokens - 1), the mean decode gap of one
    request (vLLM's definition; undefined for one-token outputs);
  * end-to-end latency: last token time - arrival time.
Over the run (``summarize``, the one summary the engine, the harness and the simulator report):
output tokens, request, output-token and total-token throughput over the wall time;
goodput: requests per second that met every objective of an ``SLO`` (DistServe's definition), and
SLO attainment: their share of every request sent, those refused or aborted included (``failed``);
preemptions; and for each latency mean, P50, P90, P99 and max. ITL is pooled over all gaps of all
requests (as vLLM reports it), TPOT is one value per request.

Example (a hand-made trace: arrival 0, tokens at 0.5, 0.6, 0.8):
    >>> r = RequestRecord(request_id="a", arrival=0.0, token_times=(0.5, 0.6, 0.8), prompt_tokens=10)
    >>> r.ttft, round(r.tpot, 3), r.e2e, [round(x, 3) for x in r.itls]
    (0.5, 0.15, 0.8, [0.1, 0.2])
    >>> SLO(ttft_s=0.6, tpot_s=0.1).met(r)
    False
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """What a finished request leaves behind; times in seconds (or steps) on one clock."""

    request_id: str
    arrival: float
    token_times: tuple[float, ...]
    prompt_tokens: int
    preemptions: int = 0
    finish_reason: str | None = None
    tag: str = ""

    @classmethod
    def of(cls, request, tag: str = "") -> RequestRecord:
        """From a scheduler ``Request`` after it finished."""
        return cls(request_id=request.request_id, arrival=request.arrival_time,
                   token_times=tuple(request.token_times), prompt_tokens=len(request.prompt_token_ids),
                   preemptions=request.num_preemptions, finish_reason=request.finish_reason, tag=tag)

    @property
    def output_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.arrival if self.token_times else None

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive arrivals (tokens stamped with one time arrived together)."""
        times = self.token_times
        return [b - a for a, b in zip(times, times[1:]) if b != a]

    @property
    def tpot(self) -> float | None:
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else None

    @property
    def e2e(self) -> float | None:
        return self.token_times[-1] - self.arrival if self.token_times else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SLO:
    """Service-level objectives; ``None`` leaves one out. A request meets the SLO when it produced
    a token and each given bound holds (TPOT only binds requests of two tokens or more)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met(self, r: RequestRecord) -> bool:
        """Whether ``r`` finished within every bound given (an aborted request meets none)."""
        if r.ttft is None or r.finish_reason == "abort":
            return False
        checks = ((self.ttft_s, r.ttft), (self.tpot_s, r.tpot), (self.e2e_s, r.e2e))
        return all(bound is None or value is None or value <= bound for bound, value in checks)


def describe(xs: Iterable[float]) -> dict[str, float]:
    """mean, p50, p90, p99, max of the values (NaN for none)."""
    a = np.asarray([x for x in xs if x is not None], np.float64)
    if a.size == 0:
        return {k: float("nan") for k in ("mean", *(f"p{p}" for p in PERCENTILES), "max")}
    out = {"mean": float(a.mean())}
    out.update({f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES})
    out["max"] = float(a.max())
    return out


def summarize(records: list[RequestRecord], wall_s: float, slo: SLO | None = None, *,
              failed: int = 0) -> dict[str, float]:
    """Run-level metrics as a flat dict (``ttft_p99_s``, ``goodput_req_per_s``, ...); ``failed``:
    requests sent that left no record (refused), which count against ``slo_attainment``."""
    if wall_s <= 0:
        raise ValueError(f"wall_s must be > 0, got {wall_s}")
    out_tokens = sum(r.output_tokens for r in records)
    summary = {"requests": float(len(records)), "output_tokens": float(out_tokens), "wall_s": wall_s,
               "request_throughput": len(records) / wall_s,
               "output_tokens_per_s": out_tokens / wall_s,
               "total_tokens_per_s": (out_tokens + sum(r.prompt_tokens for r in records)) / wall_s,
               "preemptions": float(sum(r.preemptions for r in records))}
    series = {"ttft": [r.ttft for r in records], "itl": [x for r in records for x in r.itls],
              "tpot": [r.tpot for r in records], "e2e": [r.e2e for r in records]}
    for name, xs in series.items():
        summary.update({f"{name}_{k}_s": v for k, v in describe(xs).items()})
    if slo is not None:
        good = sum(slo.met(r) for r in records)
        summary["goodput_req_per_s"] = good / wall_s
        sent = len(records) + failed
        summary["slo_attainment"] = good / sent if sent else float("nan")
    return summary


def by_tag(records: list[RequestRecord], wall_s: dict[str, float] | float, slo: SLO | None = None
           ) -> dict[str, dict[str, float]]:
    """``summarize`` per tag (e.g. a replay's "cold" and "warm" passes); ``wall_s`` per tag or one."""
    tags = sorted({r.tag for r in records})
    walls = wall_s if isinstance(wall_s, dict) else dict.fromkeys(tags, wall_s)
    return {t: summarize([r for r in records if r.tag == t], walls[t], slo) for t in tags}
