"""What a step's sampler needs from the plan: ``sampling_arrays(plan, rows, tokens)`` gathers each
sequence's sampling parameters, the token ids it may not sample yet, its penalties and the prompt
tokens whose log-probabilities it asked for, padded to the step's rows and tokens - or None when
the step needs none of it (all greedy: the step compiles to the argmax alone).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvlab.engine.sampling import SamplingArrays
from kvlab.schedulers.params import MAX_LOGPROBS
from kvlab.schedulers.plan import StepPlan
from kvlab.schedulers.shapes import next_pow2
from kvlab.schedulers.stopping import ending_token_ids


def sampling_arrays(plan: StepPlan, num_rows: int, num_tokens: int = 0) -> SamplingArrays | None:
    """The step's per-row sampling parameters, or None when every sequence is greedy, none has
    tokens banned (EOS and stop ids before ``min_tokens``) and none asks for log-probabilities
    (the step then compiles to the argmax alone). Shapes that vary are rounded up to powers of
    two (the banned ids per row, the top log-probabilities) to bound compilations."""
    if _plain_step(plan):
        return None
    requests = [s.request for s in plan.seqs]
    counters = [s.sample_index or 0 for s in plan.seqs]     # the output token each row samples
    bans = [ending_token_ids(s.request) if s.samples and s.sample_index < s.request.params.min_tokens
            else () for s in plan.seqs]
    if all(r.params.plain for r in requests) and not any(bans):
        return None                                     # the common greedy step: one pass
    asked = [r.params.logprobs for r in requests if r.params.logprobs is not None]
    penalized = any(r.params.penalized for r in requests)
    prompt_next, prompt_k = _prompt_next(plan, num_tokens)
    if (not any(r.params.temperature > 0 for r in requests) and not any(bans) and not asked
            and not penalized and prompt_k is None):
        return None
    values = np.array([(r.params.temperature, r.params.top_k, r.params.top_p, r.seed, i,
                        r.params.min_p) for r, i in zip(requests, counters)], np.float64)
    banned = None
    if any(bans):
        banned = np.full((len(bans), next_pow2(max(map(len, bans)))), -1, np.int32)
        for i, ids in enumerate(bans):
            banned[i, :len(ids)] = ids
    logprobs = None if not asked else min(next_pow2(max(asked)), MAX_LOGPROBS) if max(asked) else 0
    penalties = None if not penalized else np.array(
        [(r.params.repetition_penalty, r.params.presence_penalty, r.params.frequency_penalty,
          len(r.prompt_token_ids)) for r in requests], np.float64)
    arrays = SamplingArrays.from_rows(num_rows, plan.rows, values, banned=banned, logprobs=logprobs,
                                      penalties=penalties)
    return dataclasses.replace(arrays, prompt_next=prompt_next, prompt_logprobs=prompt_k)


def _plain_step(plan: StepPlan) -> bool:
    """Whether every sequence is ``plain`` and none is short of ``min_tokens`` (so none has
    tokens banned): the common step, one pass over the rows."""
    for seq in plan.seqs:
        params, index = seq.request.params, seq.sample_index
        if not params.plain or (index is not None and index < params.min_tokens):
            return False
    return True


def _prompt_next(plan: StepPlan, num_tokens: int) -> tuple[np.ndarray | None, int | None]:
    """For requests asking prompt log-probabilities: the prompt token after each of their query
    tokens ([num_tokens] int32, -1 elsewhere) and the top count (a power of two), or (None, None)
    when no query token of this step has a following prompt token to score."""
    following, asked, at = None, [], 0
    for seq in plan.seqs:
        req, n = seq.request, seq.num_new_tokens
        k, prompt = req.params.prompt_logprobs, req.prompt_token_ids
        if k is not None and seq.start + 1 < len(prompt):
            if following is None:
                following = np.full(num_tokens, -1, np.int32)
            end = min(seq.start + n, len(prompt) - 1)
            following[at:at + end - seq.start] = prompt[seq.start + 1:end + 1]
            asked.append(k)
        at += n
    if following is None:
        return None, None
    return following, min(next_pow2(max(asked)), MAX_LOGPROBS) if max(asked) else 0
