"""ContinuousScheduler: Orca/vLLM iteration-level batching with whole-prompt prefill.

Every step, each running request decodes one token; waiting requests are admitted in policy order
while the sequence limit, the token budget, the cache and the admission strategy allow, their
whole prompt computed in the same step as the decodes (one mixed ragged batch). With
``OptimisticAdmission`` (the default) a running request that finds no free page preempts the
policy's victim by recompute; with ``ReserveAdmission`` nothing is ever preempted.

Examples:
    >>> from kvlab.kvcache import PagedKVCache
    >>> from kvlab.schedulers import ContinuousScheduler, Request, SamplingParams
    >>> sched = ContinuousScheduler(max_num_seqs=4)
    >>> sched.attach(PagedKVCache(num_pages=8, page_size=4))
    >>> sched.add(Request("r0", [1, 2, 3], SamplingParams(max_tokens=2)))
    >>> plan = sched.schedule()
    >>> [(s.request.request_id, s.start, s.num_new_tokens) for s in plan.seqs]
    [('r0', 0, 3)]
    >>> [o.finished for o in sched.update(plan, [7])]
    [False]
"""

from __future__ import annotations

from kvlab.schedulers.iteration import IterationScheduler


class ContinuousScheduler(IterationScheduler):
    """Iteration-level batching; ``max_num_seqs`` sequences and ``max_num_batched_tokens`` tokens
    per step at most; ``policy`` orders admission and picks preemption victims; ``admission``:
    ``OptimisticAdmission()`` (default) or ``ReserveAdmission()``; ``decode_steps``: decode steps
    a plan of only decodes may run (``kvlab.schedulers.multi_step``)."""

    def __init__(self, *, max_num_seqs: int = 64, max_num_batched_tokens: int = 2048, policy=None,
                 admission=None, preemption=None, decode_steps: int = 1):
        super().__init__(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                         max_chunk_tokens=None, policy=policy, admission=admission, preemption=preemption,
                         decode_steps=decode_steps)
