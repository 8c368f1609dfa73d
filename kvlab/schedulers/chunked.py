"""ChunkedScheduler: chunked prefill (Sarathi-Serve, vLLM v1, DeepSpeed-FastGen's split-fuse,
TGI v3): a per-step token budget that decodes take first and prefill chunks fill, so a long prompt
never stalls the running decodes, and every step costs about the same.

Examples:
    >>> from kvlab.kvcache import PagedKVCache
    >>> from kvlab.schedulers import ChunkedScheduler, Request, SamplingParams
    >>> sched = ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=8)
    >>> sched.attach(PagedKVCache(num_pages=16, page_size=4))
    >>> sched.add(Request("long", list(range(3, 23)), SamplingParams(max_tokens=2)))
    >>> [[(s.start, s.num_new_tokens) for s in sched.schedule().seqs] for _ in range(1)]
    [[(0, 8)]]
"""

from __future__ import annotations

from kvlab.schedulers.iteration import IterationScheduler


class ChunkedScheduler(IterationScheduler):
    """At most ``max_num_batched_tokens`` tokens a step; a prefill computes at most
    ``max_chunk_tokens`` per step (default: the whole budget). Any prompt length is accepted:
    prompts and recomputations after preemption are split into chunks. ``decode_steps``: decode
    steps a plan of only decodes may run (``kvlab.schedulers.multi_step``)."""

    def __init__(self, *, max_num_seqs: int = 64, max_num_batched_tokens: int = 2048,
                 max_chunk_tokens: int | None = None, policy=None, admission=None,
                 preemption=None, decode_steps: int = 1):
        super().__init__(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                         max_chunk_tokens=max_chunk_tokens or max_num_batched_tokens, policy=policy,
                         admission=admission, preemption=preemption,
                         decode_steps=decode_steps)
