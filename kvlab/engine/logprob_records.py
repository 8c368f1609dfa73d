"""A step's log-probabilities, written into the requests that asked for them: each sampled token's
``{token id: log-prob}`` (the sampled token first, then its top k) and, for prompt log-probs, the
entry of every prompt token the step's query rows score."""

from __future__ import annotations


def record_logprobs(plan, logprobs) -> None:
    """Append each sampled token's ``{token: log-prob}`` (the sampled token, then its top k) to the
    requests that asked and got a token this step."""
    for seq in plan.seqs:
        req, k = seq.request, seq.request.params.logprobs
        if k is None or req.logprobs is None or len(req.logprobs) >= len(req.output_token_ids):
            continue
        req.logprobs.append(_entry(logprobs, seq.row, req.output_token_ids[-1], k))


def record_prompt_logprobs(plan, logprobs) -> None:
    """Fill each asking request's ``prompt_logprobs[p + 1]`` (the log-probability of prompt token
    p + 1 after tokens ..p, and the top k there) from its query tokens at positions p."""
    at = 0
    for seq in plan.seqs:
        req, n = seq.request, seq.num_new_tokens
        k, filled = req.params.prompt_logprobs, req.prompt_logprobs
        if k is not None and filled is not None:
            prompt = req.prompt_token_ids
            for i, pos in enumerate(range(seq.start, min(seq.start + n, len(prompt) - 1)), start=at):
                filled[pos + 1] = _entry(logprobs, i, prompt[pos + 1], k)
        at += n


def _entry(logprobs, i: int, token: int, k: int) -> dict[int, float]:
    """Row ``i`` of ``logprobs`` as ``{token: log-prob}``: ``token`` first, then the top ``k``."""
    entry = {token: float(logprobs.sampled[i])}
    for top, value in zip(logprobs.top_ids[i, :k].tolist(), logprobs.top[i, :k].tolist()):
        entry.setdefault(top, value)
    return entry
