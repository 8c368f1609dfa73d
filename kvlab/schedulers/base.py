"""The scheduler contract: ``add``, ``schedule -> StepPlan``, ``update``, ``abort``.

A scheduler owns the request queues and drives the KV cache it is attached to (admission,
growth, preemption, release). Its consumers (the engine, the harness, the simulator) read only
what this contract declares: the limits, the padding policy ``shapes``, and the counters.
"""

from __future__ import annotations

import abc

from kvlab.schedulers.plan import ScheduledSeq, StepOutput, StepPlan, StepTable
from kvlab.schedulers.request import Request

__all__ = ["ScheduledSeq", "Scheduler", "StepOutput", "StepPlan", "StepTable"]


class Scheduler(abc.ABC):
    """Decides each step which sequences run and how many tokens each computes.

    ``max_num_seqs`` and ``max_num_batched_tokens`` bound every plan (rows and tokens);
    ``shapes`` is the padding policy the executor applies to its plans (``BucketedShapes`` or
    ``FixedShapes``, see ``kvlab.schedulers.shapes``); ``num_preemptions`` counts preemptions."""

    max_num_seqs: int
    max_num_batched_tokens: int
    shapes: object
    cache: object = None              # the attached KVCache
    num_preemptions: int = 0

    @abc.abstractmethod
    def attach(self, cache) -> None:
        """Bind the KV cache whose pages this scheduler manages."""

    @abc.abstractmethod
    def add(self, request: Request) -> None:
        """Queue a request; raises ValueError if it can never be scheduled."""

    @abc.abstractmethod
    def schedule(self) -> StepPlan:
        """Plan the next step and allocate its cache pages. It may be called again before the
        previous plan's ``update`` (an engine plans step N+1 while step N runs): build the plan
        with ``StepPlan.of`` (it marks the plan's tokens computed and its samples pending), count
        a request's tokens as ``num_planned_tokens`` (its pending tokens are computed by the next
        plan, their ids filled in on the device) and plan nothing for a request whose pending
        tokens end it (``Request.ends_by_length``)."""

    @abc.abstractmethod
    def update(self, plan: StepPlan, sampled_tokens, now: float | None = None) -> list[StepOutput]:
        """Apply a step's sampled tokens (``sampled_tokens[row]`` for each planned sequence that
        samples; at least ``plan.num_rows`` of them), plans in the order they were made; a
        request preempted or finished since its plan was made takes the token without
        committing it to the cache (or ignores it); ``now`` is the time stamped on the new tokens
        (default: ``time.perf_counter()``; simulations pass their clock). Finished requests
        (``kvlab.schedulers.stopping.check_stop``) release everything they hold."""

    @abc.abstractmethod
    def finish(self, request_id: str, reason: str) -> Request:
        """End a request now with ``reason`` (an abort); frees everything it holds."""

    @abc.abstractmethod
    def has_unfinished(self) -> bool:
        """Whether any request is waiting or running."""

    @property
    @abc.abstractmethod
    def num_running(self) -> int:
        """Requests holding a batch row now."""

    @property
    @abc.abstractmethod
    def num_waiting(self) -> int:
        """Requests queued (new, or preempted by recompute) or swapped out."""

    def abort(self, request_id: str) -> Request:
        """Abort a waiting or running request; its pages return to the pool."""
        return self.finish(request_id, "abort")
