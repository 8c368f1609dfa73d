"""PersistentScheduler: LMDeploy's persistent batch / JetStream's decode slots.

A fixed number of slots and a fixed token budget per step, with chunked prefill (LMDeploy's
dynamic split-fuse) inside it. Its padding policy is ``FixedShapes``: every step is padded to the
same shapes (all slots, the whole budget, the longest page table), so the engine compiles the
step once and never again. A request takes the lowest free slot when admitted and gives it back
when it finishes or is preempted; its slot is its batch row (JetStream's decode slots), and idle
slots are empty rows that attention masks out.

Examples:
    >>> from kvlab.kvcache import PagedKVCache
    >>> from kvlab.schedulers import PersistentScheduler, Request, SamplingParams
    >>> sched = PersistentScheduler(num_slots=2, tokens_per_step=16)
    >>> sched.attach(PagedKVCache(num_pages=16, page_size=4))
    >>> for i in range(3):
    ...     sched.add(Request(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=4)))
    >>> plan = sched.schedule()
    >>> [(s.request.request_id, s.row) for s in plan.seqs]
    [('r0', 0), ('r1', 1)]
"""

from __future__ import annotations

from kvlab.schedulers.iteration import IterationScheduler
from kvlab.schedulers.shapes import FixedShapes


class PersistentScheduler(IterationScheduler):
    """``num_slots`` sequences and ``tokens_per_step`` tokens every step, same shapes always;
    ``decode_steps``: decode steps a plan of only decodes may run (``kvlab.schedulers.multi_step``)."""

    def __init__(self, *, num_slots: int = 64, tokens_per_step: int = 512,
                 max_chunk_tokens: int | None = None, policy=None, admission=None,
                 preemption=None, decode_steps: int = 1):
        super().__init__(max_num_seqs=num_slots, max_num_batched_tokens=tokens_per_step,
                         max_chunk_tokens=max_chunk_tokens or tokens_per_step, policy=policy,
                         admission=admission, preemption=preemption,
                         decode_steps=decode_steps)
        self.shapes = FixedShapes()
        self.slots: list[str | None] = [None] * num_slots
        self.slot_of: dict[str, int] = {}

    def _on_enter(self, request) -> None:
        slot = self.slots.index(None)
        self.slots[slot] = request.request_id
        self.slot_of[request.request_id] = slot

    def _on_leave(self, request) -> None:
        slot = self.slot_of.pop(request.request_id)
        self.slots[slot] = None

    def _assign_rows(self, seqs):
        rows = [s.at_row(self.slot_of[s.request.request_id]) for s in seqs]
        return sorted(rows, key=lambda s: s.row)
