"""The scheduler contract: ``add``, ``schedule -> StepPlan``, ``update``, ``abort``."""

from __future__ import annotations

import abc
import dataclasses

from kvlab.schedulers.request import Request


@dataclasses.dataclass(frozen=True)
class ScheduledSeq:
    """One sequence in a step: ``num_new_tokens`` tokens starting at position ``start``."""

    request: Request
    start: int
    num_new_tokens: int

    @property
    def token_ids(self) -> list[int]:
        """The tokens computed this step (a slice: a decode copies one token, not the sequence)."""
        r, start, end = self.request, self.start, self.start + self.num_new_tokens
        n = len(r.prompt_token_ids)
        if start >= n:
            return r.output_token_ids[start - n:end - n]
        if end <= n:
            return r.prompt_token_ids[start:end]
        return r.prompt_token_ids[start:] + r.output_token_ids[:end - n]


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What runs this step (preemptions already applied to the cache). ``swap_out`` copies must be
    made before the step runs, and so must ``swap_in`` ones (a plan never has both)."""

    seqs: list[ScheduledSeq]
    preempted: list[Request] = dataclasses.field(default_factory=list)
    swap_out: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (device, host) page
    swap_in: list[tuple[int, int]] = dataclasses.field(default_factory=list)   # (host, device) page

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.seqs)

    @property
    def is_empty(self) -> bool:
        return not self.seqs


@dataclasses.dataclass(frozen=True)
class StepOutput:
    """A request's progress after one step."""

    request: Request
    new_token_ids: list[int]
    finished: bool


class Scheduler(abc.ABC):
    """Decides each step which sequences run and how many tokens each computes.

    ``max_num_seqs`` and ``max_num_batched_tokens`` bound every plan; ``fixed_shapes`` asks the
    runner to pad every step to the same shapes."""

    max_num_seqs: int
    max_num_batched_tokens: int
    fixed_shapes: bool = False

    @abc.abstractmethod
    def attach(self, cache) -> None:
        """Bind the KV cache whose pages this scheduler manages."""

    @abc.abstractmethod
    def add(self, request: Request) -> None:
        """Queue a request; raises ValueError if it can never be scheduled."""

    @abc.abstractmethod
    def schedule(self) -> StepPlan:
        """Plan the next step and allocate its cache pages."""

    @abc.abstractmethod
    def update(self, plan: StepPlan, sampled_tokens, now: float | None = None) -> list[StepOutput]:
        """Apply a step's sampled tokens (one per planned sequence, in order); ``now`` is the
        time stamped on the new tokens (default: ``time.perf_counter()``; simulations pass
        their clock)."""

    @abc.abstractmethod
    def finish(self, request_id: str, reason: str) -> Request:
        """End a request now (stop string, abort); frees what it holds."""

    @abc.abstractmethod
    def has_unfinished(self) -> bool:
        """Whether any request is waiting or running."""

    def abort(self, request_id: str) -> Request:
        """Abort a waiting or running request; its pages return to the pool."""
        return self.finish(request_id, "abort")
