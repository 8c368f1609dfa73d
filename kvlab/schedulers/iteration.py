"""IterationScheduler: the step loop shared by the continuous, chunked and persistent schedulers
(Orca's iteration-level scheduling).

Each step, within ``max_num_batched_tokens`` tokens and ``max_num_seqs`` sequences:
  1. every running request continues, decodes first, then requests in the middle of a chunked
     prefill (their next chunk), oldest first within each. When its pages cannot be allocated, the
     policy's victim among the running requests not yet scheduled this step is preempted by
     recompute (its pages are freed; it waits again with the tokens it generated);
  2. if nothing was preempted, waiting requests are admitted in the policy's order (stopping at
     the first that does not fit): the cache attaches a cached prefix, the admission strategy
     agrees, and the rest of the prompt - whole, or a chunk of at most ``max_chunk_tokens`` - is
     computed in this same step.
A chunk that ends before the request's last token samples nothing; the step that computes the
last token samples the next one.
"""

from __future__ import annotations

import math
import time

from kvlab.schedulers.admission import OptimisticAdmission, lifetime_tokens
from kvlab.schedulers.base import ScheduledSeq, Scheduler, StepOutput, StepPlan
from kvlab.schedulers.policies import FCFS
from kvlab.schedulers.preemption import RecomputePreemption
from kvlab.schedulers.request import Request, RequestStatus


class IterationScheduler(Scheduler):
    """See the module docstring. ``max_chunk_tokens=None`` prefills whole prompts in one step."""

    def __init__(self, *, max_num_seqs: int, max_num_batched_tokens: int,
                 max_chunk_tokens: int | None, policy=None, admission=None, preemption=None):
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= "
                             f"max_num_seqs ({max_num_seqs}) so every running sequence can decode")
        if max_chunk_tokens is not None and max_chunk_tokens < 1:
            raise ValueError(f"max_chunk_tokens must be None or >= 1, got {max_chunk_tokens}")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_chunk_tokens = max_chunk_tokens
        self.policy = policy or FCFS()
        self.admission = admission or OptimisticAdmission()
        self.preemption = preemption or RecomputePreemption()
        self.cache = None
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self._swap_out: list[tuple[int, int]] = []
        self.num_preemptions = 0       # all preemptions, by swap or by recompute
        self.num_swapped_out = 0
        self.step_count = 0

    @property
    def chunked(self) -> bool:
        return self.max_chunk_tokens is not None

    def attach(self, cache) -> None:
        if self.cache is not None and self.cache is not cache:
            raise ValueError("this scheduler is already attached to another cache")
        if self.preemption.swaps and cache.host_tier is None:
            raise ValueError("SwapPreemption needs a cache with a host tier, e.g. "
                             "PagedKVCache(..., host_tier=HostTier(num_pages=...))")
        self.cache = cache

    def _cache(self):
        if self.cache is None:
            raise RuntimeError("attach a KV cache first (the Engine does this)")
        return self.cache

    def _chunk_limit(self) -> float:
        """Most new tokens one sequence computes in one step."""
        limits = [self.max_chunk_tokens, self._cache().max_step_tokens]
        return min((x for x in limits if x is not None), default=math.inf)

    # ---- queue ---------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        cache = self._cache()
        n = len(request.prompt_token_ids)
        longest = lifetime_tokens(request)
        rid = request.request_id
        if not self.chunked:
            if n > self.max_num_batched_tokens:
                raise ValueError(f"request {rid!r}: prompt of {n} tokens exceeds max_num_batched_tokens="
                                 f"{self.max_num_batched_tokens} (whole-prompt prefill must fit in one "
                                 f"step; a ChunkedScheduler splits it)")
            if self.admission.preempts and longest - 1 > self.max_num_batched_tokens:
                raise ValueError(f"request {rid!r} may grow to {longest} tokens but max_num_batched_tokens="
                                 f"{self.max_num_batched_tokens}: a preempted request is recomputed in "
                                 f"one step, so prompt + max_tokens - 1 must fit the budget; lower "
                                 f"max_tokens, raise the budget, or chunk (ChunkedScheduler)")
        first_step = n if not self.chunked else min(n, self._chunk_limit())
        cache.validate_request(prompt_tokens=first_step, max_tokens=longest)
        if any(r.request_id == rid for r in self.waiting + self.running + self.swapped):
            raise ValueError(f"request id {rid!r} is already queued")
        request.status = RequestStatus.WAITING
        request.queued_step = self.step_count
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # ---- planning ------------------------------------------------------------------------------
    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self._on_leave(request)
        request.num_preemptions += 1
        request.queued_step = self.step_count
        self.num_preemptions += 1
        if self.preemption.swaps and self.cache.can_swap_out(request.request_id):
            self._swap_out += self.cache.swap_out(request.request_id)
            self.num_swapped_out += 1
            request.status = RequestStatus.SWAPPED
            self.swapped.append(request)
            return
        self.cache.free(request.request_id)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        self.waiting.append(request)

    def _on_enter(self, request: Request) -> None:
        """A request starts running (the persistent scheduler gives it a slot)."""

    def _on_leave(self, request: Request) -> None:
        """A request stops running: finished, aborted or preempted."""

    def _order_plan(self, seqs: list[ScheduledSeq]) -> list[ScheduledSeq]:
        return seqs

    def schedule(self) -> StepPlan:
        cache = self._cache()
        cache.tick()
        self.step_count += 1
        budget, limit = self.max_num_batched_tokens, self._chunk_limit()
        seqs: list[ScheduledSeq] = []
        preempted: list[Request] = []
        scheduled: set[int] = set()
        # 1. running requests continue: decodes first (never stalled by a prefill), then the
        #    chunks of prefills in progress; oldest first within each.
        self.running.sort(key=lambda r: (r.num_tokens - r.num_computed_tokens > 1, r.arrival_time))
        for req in list(self.running):
            if req.status is not RequestStatus.RUNNING:      # preempted earlier in this loop
                continue
            n = req.num_tokens - req.num_computed_tokens
            if n > 1:
                n = min(n, limit, budget)
            elif budget < 1:
                n = 0
            if n <= 0:
                continue
            target = req.num_computed_tokens + n
            while not cache.can_allocate(req.request_id, target):
                candidates = [r for r in self.running if id(r) not in scheduled]
                victim = self.policy.victim(candidates)
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            if req.status is RequestStatus.RUNNING:
                cache.allocate(req.request_id, target)
                seqs.append(ScheduledSeq(req, req.num_computed_tokens, n))
                scheduled.add(id(req))
                budget -= n
        # 2. swapped requests come back first (oldest first), then waiting requests are admitted
        #    in policy order (head-of-line: stop at the first that won't fit).
        swap_in: list[tuple[int, int]] = []
        if not preempted:
            self.swapped.sort(key=lambda r: r.arrival_time)
            while self.swapped and len(self.running) < self.max_num_seqs and budget > 0:
                req = self.swapped[0]
                n = min(req.num_tokens - req.num_computed_tokens, limit, budget)
                target = req.num_computed_tokens + n
                if not cache.can_swap_in(req.request_id):
                    break
                swap_in += cache.swap_in(req.request_id)
                self.swapped.pop(0)
                self.running.append(req)
                self._on_enter(req)
                req.status = RequestStatus.RUNNING
                if cache.can_allocate(req.request_id, target):      # else it runs next step
                    cache.allocate(req.request_id, target)
                    seqs.append(ScheduledSeq(req, req.num_computed_tokens, n))
                    budget -= n
        if not preempted and not self.swapped:
            for req in self.policy.order(self.waiting, cache, self.step_count):
                if len(self.running) >= self.max_num_seqs or budget <= 0:
                    break
                if not self._admit(req, budget, limit, seqs):
                    break
                budget -= seqs[-1].num_new_tokens
        swap_out, self._swap_out = self._swap_out, []
        return StepPlan(seqs=self._order_plan(seqs), preempted=preempted, swap_out=swap_out,
                        swap_in=swap_in)

    def _admit(self, req: Request, budget: int, limit: float, seqs: list[ScheduledSeq]) -> bool:
        cache, rid, total = self.cache, req.request_id, req.num_tokens
        hit = cache.admit(rid, req.tokens, salt=req.cache_salt, priority=req.priority)
        n = min(total - hit, limit, budget) if self.chunked else total - hit
        if (n > budget or not cache.can_allocate(rid, hit + n)
                or not self.admission.admits(cache, req, self.running)):
            cache.free(rid)                     # roll back: the prefix goes back to the cache
            return False
        cache.allocate(rid, hit + n)
        self.waiting.remove(req)
        self.running.append(req)
        self._on_enter(req)
        req.status = RequestStatus.RUNNING
        req.num_computed_tokens = hit
        seqs.append(ScheduledSeq(req, hit, n))
        return True

    def update(self, plan: StepPlan, sampled_tokens, now: float | None = None) -> list[StepOutput]:
        if len(sampled_tokens) < len(plan.seqs):
            raise ValueError(f"{len(plan.seqs)} sequences were planned, {len(sampled_tokens)} tokens given")
        now = time.perf_counter() if now is None else now
        outputs = []
        for seq, token in zip(plan.seqs, sampled_tokens):
            req = seq.request
            if req.is_finished:  # aborted between schedule and update
                continue
            req.num_computed_tokens = seq.start + seq.num_new_tokens
            if req.num_computed_tokens < req.num_tokens:      # a prefill chunk: nothing sampled
                self.cache.commit(req.request_id, req.tokens, req.num_computed_tokens)
                outputs.append(StepOutput(req, [], False))
                continue
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
            self._on_leave(req)
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.swapped:
            self.swapped.remove(req)
        req.status = RequestStatus.FINISHED

    def finish(self, request_id: str, reason: str) -> Request:
        for req in self.running + self.waiting + self.swapped:
            if req.request_id == request_id:
                req.finish_reason = reason
                self._release(req)
                return req
        raise KeyError(f"no waiting or running request {request_id!r}")
