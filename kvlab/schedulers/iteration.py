"""IterationScheduler: the step loop shared by the continuous, chunked and persistent schedulers
(Orca's iteration-level scheduling).

Each step, within ``max_num_batched_tokens`` tokens and ``max_num_seqs`` sequences:
  1. every running request continues, decodes first, then requests in the middle of a chunked
     prefill (their next chunk), oldest first within each. When its pages cannot be allocated, the
     policy's victim among all running requests (one already planned this step leaves the plan)
     is preempted by the preemption strategy (recompute: its pages are freed and it waits again
     with the tokens it generated; swap: its pages go to the host tier), until the pages fit or
     the request is itself the victim;
  2. if nothing was preempted, waiting requests are admitted in the policy's order (stopping at
     the first that does not fit): the cache attaches a cached prefix, the admission strategy
     agrees, and the rest of the prompt - whole, or a chunk of at most ``max_chunk_tokens`` - is
     computed in this same step.
A chunk that ends before the request's last token samples nothing; the step that computes the
last token samples the next one. With ``decode_steps`` k > 1, a plan of only decodes may run k
steps in one launch (``kvlab.schedulers.multi_step``).
"""

from __future__ import annotations

import math
import operator
import time

import numpy as np

from kvlab.schedulers.admission import OptimisticAdmission, lifetime_tokens
from kvlab.schedulers.base import Scheduler
from kvlab.schedulers.multi_step import read_burst, room_for, takes_steps
from kvlab.schedulers.plan import ScheduledSeq, StepOutput, StepPlan
from kvlab.schedulers.policies import FCFS
from kvlab.schedulers.preemption import RecomputePreemption
from kvlab.schedulers.request import Request, RequestStatus
from kvlab.schedulers.shapes import BucketedShapes
from kvlab.schedulers.step_builder import StepBuilder


class IterationScheduler(Scheduler):
    """See the module docstring. ``max_chunk_tokens=None`` prefills whole prompts in one step;
    ``decode_steps``: decode steps a plan of only decodes may run in one launch (1: one a plan)."""

    def __init__(self, *, max_num_seqs: int, max_num_batched_tokens: int,
                 max_chunk_tokens: int | None, policy=None, admission=None, preemption=None,
                 decode_steps: int = 1):
        if not (isinstance(decode_steps, int) and decode_steps >= 1):
            raise ValueError(f"decode_steps must be an integer >= 1 (1: one decode step a launch), "
                             f"got {decode_steps!r}")
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
        self.decode_steps = decode_steps
        self.policy = policy or FCFS()
        self.admission = admission or OptimisticAdmission()
        self.preemption = preemption or RecomputePreemption()
        self.shapes = BucketedShapes()
        self.cache = None
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self._swap_out: list[tuple[int, int]] = []
        self.num_preemptions = 0       # all preemptions, by swap or by recompute
        self.num_swapped_out = 0
        self.step_count = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self.swapped)

    @property
    def chunked(self) -> bool:
        return self.max_chunk_tokens is not None

    def attach(self, cache) -> None:
        if self.cache is not None and self.cache is not cache:
            raise ValueError("this scheduler is already attached to another cache")
        self.preemption.check(cache)
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
        self.admission.check(request, None if self.chunked else self.max_num_batched_tokens)
        first_step = n if not self.chunked else min(n, self._chunk_limit())
        cache.validate_request(prompt_tokens=n, step_tokens=first_step, total_tokens=longest)
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
        done = self.preemption.preempt(request, self.cache)
        request.status = done.status
        self._swap_out += done.swap_out
        if done.status is RequestStatus.SWAPPED:
            self.num_swapped_out += 1
            self.swapped.append(request)
        else:
            self.waiting.append(request)

    def _on_enter(self, request: Request) -> None:
        """A request starts running (the persistent scheduler gives it a slot)."""

    def _on_leave(self, request: Request) -> None:
        """A request stops running: finished, aborted or preempted."""

    def _assign_rows(self, seqs: list[ScheduledSeq]) -> list[ScheduledSeq]:
        """The plan's sequences with their batch rows, in row order (here: rows 0..n-1, which
        the step builder already gave them)."""
        return seqs

    def schedule(self) -> StepPlan:
        cache = self._cache()
        cache.tick()
        self.step_count += 1
        step = StepBuilder(self.max_num_batched_tokens, self._chunk_limit())
        self._continue_running(step)
        swap_in = [] if step.preempted else self._swap_in(step)
        if not step.preempted and not self.swapped:
            for req in self.policy.order(self.waiting, cache, self.step_count):
                if len(self.running) >= self.max_num_seqs or step.budget <= 0:
                    break
                if not self._admit(req, step):
                    break
        swap_out, self._swap_out = self._swap_out, []
        return StepPlan.of(cache, self._assign_rows(step.seqs), num_steps=step.num_steps,
                           preempted=step.preempted, swap_out=swap_out, swap_in=swap_in)

    def _continue_running(self, step: StepBuilder) -> None:
        """Running requests continue: decodes first (never stalled by a prefill), then chunks of
        prefills in progress, oldest first within each. Where pages run out, the policy's victim
        among *all* running requests is preempted - even one already planned this step, which
        is then taken out of the plan - until the allocation fits or the request itself is the
        victim."""
        cache, running, status = self.cache, self.running, RequestStatus.RUNNING
        # A stable sort by (prefill in progress, arrival): by arrival, then the prefills moved
        # after the decodes. Each request's tokens to compute stay as counted here until its
        # turn (only a preempted one changes, and it is skipped).
        running.sort(key=operator.attrgetter("arrival_time"))
        order = list(running)
        counts = [r.num_planned_tokens - r.num_computed_tokens for r in order]
        if max(counts, default=0) > 1:
            pairs = sorted(zip(order, counts), key=lambda p: p[1] > 1)    # stable: decodes first
            order, counts = [r for r, _ in pairs], [n for _, n in pairs]
            running[:] = order
        step.num_steps = steps = self._steps_now(order, counts)
        try_allocate, plan = cache.try_allocate, step.plan
        for req, n in zip(order, counts):
            if req.status is not status or req.ends_by_length:   # preempted earlier in this
                continue                   # loop, or its pending token is its last one
            if n > 1:
                n = min(n, step.limit, step.budget)
            elif n > step.budget:
                n = step.budget
            if n <= 0:
                continue
            rid, start = req.request_id, req.num_computed_tokens
            target = start + (n if n > 1 else steps)
            while not try_allocate(rid, target):
                if n == 1 and steps > 1:      # the plan's lookahead does not fit (a KIVI cache's
                    steps = step.num_steps = 1    # staging pages): it runs one step instead
                    target = start + 1
                    continue
                victim = self.policy.victim(running)
                step.unplan(victim)
                self._preempt(victim)
                step.preempted.append(victim)
                if victim is req:
                    break
            else:
                plan(req, start, n)

    def _steps_now(self, order: list[Request], counts: list[int]) -> int:
        """Decode steps the plan runs in one launch: ``decode_steps`` when every running request
        decodes, none waits that could be admitted, none is swapped out, each can take them
        (``multi_step.takes_steps``, within the cache's step limit) and the cache's pages hold them
        all (``multi_step.room_for``); else 1."""
        k = min(self.decode_steps, self._chunk_limit())
        if k <= 1 or self.swapped or (self.waiting and len(self.running) < self.max_num_seqs):
            return 1
        every = all(n == 1 and takes_steps(req, k) for req, n in zip(order, counts))
        return k if every and room_for(self.cache, order, k) else 1

    def _swap_in(self, step: StepBuilder) -> list[tuple[int, int]]:
        """Swapped requests come back first, oldest first, while rows and pages allow: each only
        when its pages and those of its next step fit (vLLM's rule), and runs in this step."""
        cache, copies = self.cache, []
        self.swapped.sort(key=lambda r: r.arrival_time)
        while self.swapped and len(self.running) < self.max_num_seqs and step.budget > 0:
            req = self.swapped[0]
            n = min(req.num_tokens - req.num_computed_tokens, step.limit, step.budget)
            target = req.num_computed_tokens + n
            if not cache.can_swap_in(req.request_id, target):
                break
            copies += cache.swap_in(req.request_id)
            self.swapped.pop(0)
            self.running.append(req)
            self._on_enter(req)
            req.status = RequestStatus.RUNNING
            if cache.can_allocate(req.request_id, target):   # can_swap_in saw to the pages; a
                cache.allocate(req.request_id, target)       # KIVI cache may lack staging pages:
                step.plan(req, req.num_computed_tokens, n)   # then it runs next step
        return copies

    def _admit(self, req: Request, step: StepBuilder) -> bool:
        """Admit ``req`` into this step if the cache, the budget and the admission strategy allow;
        else leave everything as it was (the cache rolls the prefix attach back)."""
        cache, rid, total = self.cache, req.request_id, req.num_tokens
        hit = cache.admit(rid, req.tokens, salt=req.cache_salt, priority=req.priority,
                          readmission=req.num_preemptions > 0)
        n = min(total - hit, step.limit, step.budget) if self.chunked else total - hit
        if (n > step.budget or not cache.can_allocate(rid, hit + n)
                or not self.admission.admits(cache, req, self.running)):
            cache.free(rid)                     # roll back: the prefix goes back to the cache
            return False
        cache.allocate(rid, hit + n)
        self.waiting.remove(req)
        self.running.append(req)
        self._on_enter(req)
        req.status = RequestStatus.RUNNING
        req.num_computed_tokens = hit
        step.plan(req, hit, n)
        return True

    def update(self, plan: StepPlan, sampled_tokens, now: float | None = None) -> list[StepOutput]:
        if len(sampled_tokens) < plan.num_rows:
            raise ValueError(f"the plan uses {plan.num_rows} batch rows, {len(sampled_tokens)} tokens given")
        now = time.perf_counter() if now is None else now
        tokens = np.asarray(sampled_tokens).tolist()
        if plan.num_steps > 1:
            return read_burst(plan, tokens, now, self.cache.commit, self._release)
        outputs, commit, output = [], self.cache.commit, StepOutput.of
        finished, running = RequestStatus.FINISHED, RequestStatus.RUNNING
        for seq in plan.seqs:
            req = seq.request
            if req.status is finished:  # aborted, or ended by a token read after this plan was made
                continue
            computed = seq.start + seq.num_new_tokens
            if seq.sample_index is None:    # a prefill chunk: nothing sampled
                if req.status is running:
                    commit(req.request_id, req.tokens, computed)
                outputs.append(output(req, [], False))
                continue
            token = tokens[seq.row]
            req.append_token(token, now)
            if req.status is running:   # not preempted since this plan was made
                commit(req.request_id, req.tokens, computed)
            if req.finish_reason is not None:
                self._release(req)
            outputs.append(output(req, [token], req.status is finished))
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
