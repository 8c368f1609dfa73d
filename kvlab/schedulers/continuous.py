"""ContinuousScheduler: Orca/vLLM iteration-level batching with whole-prompt prefill.

Every step, each running request decodes one token; waiting requests are admitted in policy order
while the sequence limit, the token budget and the cache allow, their whole prompt computed in the
same step as the decodes (one mixed ragged batch). When a running request needs a page and none is
free, the most recently arrived running request is preempted by recompute: its pages are freed and
it returns to the waiting queue with the tokens it generated, to be prefilled again later.

Example:
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

import time

from kvlab.schedulers.base import ScheduledSeq, Scheduler, StepOutput, StepPlan
from kvlab.schedulers.policies import FCFS
from kvlab.schedulers.request import Request, RequestStatus


class ContinuousScheduler(Scheduler):
    """Iteration-level batching; ``max_num_seqs`` sequences and ``max_num_batched_tokens`` tokens
    per step at most."""

    def __init__(self, *, max_num_seqs: int = 64, max_num_batched_tokens: int = 2048, policy=None):
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= "
                             f"max_num_seqs ({max_num_seqs}) so every running sequence can decode")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.policy = policy or FCFS()
        self.cache = None
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0

    def attach(self, cache) -> None:
        if self.cache is not None and self.cache is not cache:
            raise ValueError("this scheduler is already attached to another cache")
        self.cache = cache

    def _cache(self):
        if self.cache is None:
            raise RuntimeError("attach a KV cache first (the Engine does this)")
        return self.cache

    # ---- queue ---------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        cache = self._cache()
        n = len(request.prompt_token_ids)
        if n > self.max_num_batched_tokens:
            raise ValueError(f"request {request.request_id!r}: prompt of {n} tokens exceeds "
                             f"max_num_batched_tokens={self.max_num_batched_tokens} (whole-prompt "
                             f"prefill must fit in one step)")
        longest = n + request.params.max_tokens
        if request.max_total_tokens is not None:
            longest = min(longest, request.max_total_tokens)
        if longest - 1 > self.max_num_batched_tokens:
            raise ValueError(f"request {request.request_id!r} may grow to {longest} tokens but "
                             f"max_num_batched_tokens={self.max_num_batched_tokens}: a preempted "
                             f"request is recomputed in one step, so prompt + max_tokens - 1 must "
                             f"fit the budget; lower max_tokens or raise the budget")
        cache.validate_request(prompt_tokens=n, max_tokens=longest)
        if any(r.request_id == request.request_id for r in self.waiting + self.running):
            raise ValueError(f"request id {request.request_id!r} is already queued")
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- planning ------------------------------------------------------------------------------
    def _preempt(self, request: Request) -> None:
        self.cache.free(request.request_id)
        self.running.remove(request)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(request)

    def schedule(self) -> StepPlan:
        cache = self._cache()
        cache.tick()
        seqs: list[ScheduledSeq] = []
        preempted: list[Request] = []
        # 1. every running request decodes one token; preempt the newest when pages run out.
        self.running.sort(key=lambda r: r.arrival_time)
        i = 0
        while i < len(self.running):
            req = self.running[i]
            while not cache.can_allocate(req.request_id, req.num_tokens):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            if req.status is RequestStatus.RUNNING:
                cache.allocate(req.request_id, req.num_tokens)
                new = req.num_tokens - req.num_computed_tokens
                seqs.append(ScheduledSeq(req, req.num_computed_tokens, new))
                i += 1
        budget = self.max_num_batched_tokens - sum(s.num_new_tokens for s in seqs)
        # 2. admit waiting requests in policy order (head-of-line: stop at the first that won't fit);
        #    a cached prefix is reused, so only the rest of the prompt is computed.
        if not preempted:
            for req in self.policy.order(self.waiting):
                if len(self.running) >= self.max_num_seqs:
                    break
                rid, total = req.request_id, req.num_tokens
                hit = cache.admit(rid, req.tokens, salt=req.cache_salt, priority=req.priority)
                if total - hit > budget or not cache.can_allocate(rid, total):
                    cache.free(rid)            # roll back: the prefix goes back to the cache
                    break
                cache.allocate(rid, total)
                self.waiting.remove(req)
                self.running.append(req)
                req.status = RequestStatus.RUNNING
                req.num_computed_tokens = hit
                seqs.append(ScheduledSeq(req, hit, total - hit))
                budget -= total - hit
        return StepPlan(seqs=seqs, preempted=preempted)

    def update(self, plan: StepPlan, sampled_tokens) -> list[StepOutput]:
        if len(sampled_tokens) < len(plan.seqs):
            raise ValueError(f"{len(plan.seqs)} sequences were planned, {len(sampled_tokens)} tokens given")
        now = time.perf_counter()
        outputs = []
        for seq, token in zip(plan.seqs, sampled_tokens):
            req = seq.request
            if req.is_finished:  # aborted between schedule and update
                continue
            req.num_computed_tokens = seq.start + seq.num_new_tokens
            req.append_token(int(token), now)
            self.cache.commit(req.request_id, req.tokens, req.num_computed_tokens)
            if req.finish_reason is not None:
                self._release(req)
            outputs.append(StepOutput(req, [int(token)], req.is_finished))
        return outputs

    def _release(self, req: Request) -> None:
        self.cache.free(req.request_id)
        if req in self.running:
            self.running.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED

    def finish(self, request_id: str, reason: str) -> Request:
        for req in self.running + self.waiting:
            if req.request_id == request_id:
                req.finish_reason = reason
                self._release(req)
                return req
        raise KeyError(f"no waiting or running request {request_id!r}")
