"""The plan a scheduler is building: its sequences in batch-row order, the token budget left,
the requests preempted so far and the decode steps it runs in one launch."""

from __future__ import annotations

from kvlab.schedulers.plan import ScheduledSeq
from kvlab.schedulers.request import Request


class StepBuilder:
    """The plan being built: its sequences, the token budget left, the preempted requests, and
    ``num_steps``, the decode steps it runs in one launch (``kvlab.schedulers.multi_step``)."""

    def __init__(self, budget: int, limit: float):
        self.budget, self.limit = budget, limit
        self.num_steps = 1
        self.seqs: list[ScheduledSeq] = []
        self.preempted: list[Request] = []

    def plan(self, request: Request, start: int, num_new_tokens: int) -> None:
        """Add a sequence in the next batch row."""
        self.seqs.append(ScheduledSeq.of(request, start, num_new_tokens, len(self.seqs)))
        self.budget -= num_new_tokens

    def unplan(self, request: Request) -> None:
        """Take ``request`` out of the plan (it is being preempted), giving its tokens back; the
        sequences after it move up one row."""
        for i, seq in enumerate(self.seqs):
            if seq.request is request:
                self.budget += seq.num_new_tokens
                self.seqs[i:] = [s.at_row(s.row - 1) for s in self.seqs[i + 1:]]
                return
