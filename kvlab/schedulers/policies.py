"""Ordering policies: small strategy objects that order a scheduler's waiting queue."""

from __future__ import annotations

import dataclasses

from kvlab.schedulers.request import Request


@dataclasses.dataclass(frozen=True)
class FCFS:
    """First come, first served: by arrival time (a preempted request keeps its place)."""

    def order(self, waiting: list[Request]) -> list[Request]:
        return sorted(waiting, key=lambda r: r.arrival_time)
