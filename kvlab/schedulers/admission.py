"""Admission strategies: when may a waiting request start?

* ``OptimisticAdmission`` (vLLM, TensorRT-LLM "max utilization"): admit while the pages for the
  tokens computed now are free; running requests that later run out of pages are preempted.
* ``ReserveAdmission`` (TGI, TensorRT-LLM "guaranteed no evict"): admit only if the pages for the
  request's whole life (prompt + ``max_tokens``) fit beside the future growth of every running
  request, so no request is ever preempted; fewer requests run at once.
* ``StaticBatchAdmission`` (HF ``generate``-style static batching, the baseline iteration-level
  scheduling replaced): a batch is admitted together, and no request joins until every request
  of the running batch has finished.

Examples:
    >>> from kvlab.kvcache import PagedKVCache
    >>> from kvlab.schedulers.request import Request, SamplingParams
    >>> cache = PagedKVCache(num_pages=8, page_size=4)
    >>> running = [Request("a", [1] * 4, SamplingParams(max_tokens=12))]   # will need 4 pages
    >>> cache.allocate("a", 4)
    >>> new = Request("b", [1] * 4, SamplingParams(max_tokens=12))
    >>> OptimisticAdmission().admits(cache, new, running), ReserveAdmission().admits(cache, new, running)
    (True, True)
    >>> ReserveAdmission().admits(cache, Request("c", [1] * 8, SamplingParams(max_tokens=12)), running)
    False
"""

from __future__ import annotations

import dataclasses


def lifetime_tokens(request) -> int:
    """Tokens a request may hold at its end: prompt + max_tokens, capped by its context."""
    n = len(request.prompt_token_ids) + request.params.max_tokens
    return n if request.max_total_tokens is None else min(n, request.max_total_tokens)


def check_recomputable(request, recompute_limit: int | None) -> None:
    """A request that may be preempted is recomputed later: under whole-prompt prefill its
    prompt + output so far (at most ``lifetime_tokens - 1``) must fit one step's budget."""
    longest = lifetime_tokens(request)
    if recompute_limit is not None and longest - 1 > recompute_limit:
        raise ValueError(f"request {request.request_id!r} may grow to {longest} tokens but "
                         f"max_num_batched_tokens={recompute_limit}: a preempted request is "
                         f"recomputed in one step, so prompt + max_tokens - 1 must fit the budget; "
                         f"lower max_tokens, raise the budget, or chunk (ChunkedScheduler)")


@dataclasses.dataclass(frozen=True)
class OptimisticAdmission:
    """Admit when this step's pages are free; preempt later if memory runs out."""

    def admits(self, cache, request, running) -> bool:
        return True

    def check(self, request, recompute_limit: int | None) -> None:
        """Raise ValueError if ``request`` could not be served under this strategy:
        ``recompute_limit`` is the most tokens a preempted request may recompute in one step
        (None: no limit, prefills are chunked)."""
        check_recomputable(request, recompute_limit)


@dataclasses.dataclass(frozen=True)
class ReserveAdmission:
    """Admit only if every running request and this one can grow to their lifetime length."""

    def check(self, request, recompute_limit: int | None) -> None:
        """Nothing is ever preempted, so nothing is ever recomputed: every request passes."""

    def admits(self, cache, request, running) -> bool:
        growth = sum(cache.pages_needed(r.request_id, lifetime_tokens(r)) for r in running)
        need = cache.pages_needed(request.request_id, lifetime_tokens(request))
        return growth + need <= cache.num_available_pages(request.request_id)


@dataclasses.dataclass(frozen=True)
class StaticBatchAdmission:
    """Admit only into the batch forming in this step: while any running request has produced a
    token, nobody joins. With ``max_num_seqs`` as the batch size this is request-level (static)
    batching; slots freed early stay empty until the whole batch ends."""

    def admits(self, cache, request, running) -> bool:
        return all(not r.output_token_ids for r in running)

    def check(self, request, recompute_limit: int | None) -> None:
        check_recomputable(request, recompute_limit)
