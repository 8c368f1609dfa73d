"""Multi-step decoding (vLLM's multi-step scheduling): a plan of only decodes may run ``k`` decode
steps in one launch, so the host schedules, packs and launches once per ``k`` tokens of every
sequence instead of once per token.

A scheduler with ``decode_steps=k`` makes such a plan (``StepPlan.num_steps == k``) when every
running request decodes, none waits that a plan could admit (the queue is empty, or every batch
row is taken), none is swapped out, and each running request can take ``k`` steps: no
log-probabilities (they are recorded per token on the host), none of its tokens banned
(``min_tokens`` reached: the banned ids are fixed for a plan), and ``k`` more positions within
its context. Penalties are fine: their token counts live on the device and every step adds its
own tokens. Each sequence is planned
as one decode token, with pages allocated for ``k``; the executor runs ``k`` decode steps from
the plan, each step's sampled tokens the next one's inputs (``kvlab.engine.decode_burst``), and
hands back ``k`` tokens per row. The host reads them in order and stops a request at its first stop token
or length; the tokens after that are dropped, as are the extra positions' KV, whose pages the
finished request frees. Greedy (and seeded) outputs are the same as with one step per launch.

The ``k`` tokens of a row arrive together: a streaming client sees them in bursts of ``k``, and
new requests wait for the burst to end (at most ``k - 1`` steps) before they are admitted.
"""

from __future__ import annotations

from kvlab.schedulers.plan import StepOutput, StepPlan
from kvlab.schedulers.request import Request, RequestStatus


def takes_steps(request: Request, num_steps: int) -> bool:
    """Whether a running decode of ``request`` may run ``num_steps`` steps in one launch (see the
    module docstring). A request whose pending tokens end it is not planned at all: True."""
    if request.ends_by_length:
        return True
    params = request.params
    if params.logprobs is not None or params.prompt_logprobs is not None:
        return False
    if len(request.output_token_ids) + request.num_pending < params.min_tokens:
        return False
    limit = request.max_total_tokens
    return limit is None or request.num_computed_tokens + num_steps <= limit


def room_for(cache, requests: list[Request], num_steps: int) -> bool:
    """Whether ``cache``'s pages hold ``num_steps`` more positions of every one of ``requests``
    at once (a multi-step plan allocates them all, also past a request's last token); else the
    plan runs one step. (A request whose positions still do not fit, for want of a KIVI cache's
    staging pages, turns the plan into one step where the scheduler meets it.)"""
    available = cache.num_available_pages()
    if available >= len(requests) * (-(-num_steps // cache.page_size) + 1):    # whatever they hold
        return True
    need = sum(cache.pages_needed(r.request_id, r.num_computed_tokens + num_steps) for r in requests)
    return need <= available


def read_burst(plan: StepPlan, tokens: list[int], now: float, commit, release) -> list[StepOutput]:
    """Apply a multi-step plan's tokens: ``tokens`` holds ``plan.num_steps`` blocks of equal
    width, block ``j`` the tokens step ``j`` sampled by batch row. Each sequence takes its tokens
    in order until it finishes; ``commit(request_id, token_ids, num_computed)`` records the KV
    its steps wrote (up to the tokens it kept), ``release(request)`` frees a finished one."""
    steps = plan.num_steps
    width = len(tokens) // steps
    outputs = []
    finished, running = RequestStatus.FINISHED, RequestStatus.RUNNING
    for seq in plan.seqs:
        req = seq.request
        if req.status is finished:   # aborted, or ended by a token read after this plan was made
            continue
        row = tokens[seq.row:steps * width:width]      # its tokens, step by step
        kept = row[:req.append_tokens(row, now)]
        if req.status is running:   # not preempted since this plan was made
            commit(req.request_id, req.tokens, min(seq.start + steps, req.num_tokens))
        if req.finish_reason is not None:
            release(req)
        outputs.append(StepOutput.of(req, kept, req.status is finished))
    return outputs
