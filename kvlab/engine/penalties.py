"""Repetition, presence and frequency penalties (vLLM's meanings) on the device, with no transfer
per token.

Penalties need each sequence's token counts. They live on the device, one row per block-table
row (``TokenCounts``: ``output [R, V]`` int32, how often each token was generated; ``prompt [R, V]``
bool, which tokens the prompt holds). Each step adds its own input tokens inside the jitted step
(a decode's input is the token sampled the step before; a prefill chunk's tokens below the prompt
length are prompt tokens), so a decode step moves nothing for them. A sequence new to its row -
admitted, or re-admitted after a recompute preemption - has its row cleared and seeded with the
tokens computed before this step (a cached prefix, or its recomputed history) by one scatter
before the step: once per admission. Memory: R x V x 5 bytes (R: the block table's rows).

Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.array([[2.0, -1.0, 0.5]])
    >>> output, prompt = jnp.array([[0, 2, 0]]), jnp.array([[True, False, False]])
    >>> apply_penalties(logits, output, prompt, repetition=jnp.array([2.0]),
    ...                 presence=jnp.array([0.5]), frequency=jnp.array([0.25])).tolist()
    [[1.0, -3.0, 0.5]]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.attention.reference import token_positions
from kvlab.schedulers.shapes import next_pow2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenCounts:
    """Per block-table row: ``output [R, V]`` int32 generated-token counts, ``prompt [R, V]`` bool
    prompt-token presence."""

    output: jax.Array
    prompt: jax.Array


def apply_penalties(logits, output, prompt, *, repetition, presence, frequency):
    """``logits [S, V]`` penalized: a token seen in the prompt or the output has a positive logit
    divided by ``repetition [S]`` and a negative one multiplied by it; then ``frequency [S]`` times
    its output count and ``presence [S]`` if it was generated at all are subtracted."""
    seen = prompt | (output > 0)
    r = repetition[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / r, logits * r), logits)
    return logits - frequency[:, None] * output - presence[:, None] * (output > 0)


def add_tokens(counts: TokenCounts, rows, tokens, is_output, valid) -> TokenCounts:
    """``counts`` with ``tokens [N]`` added to ``rows [N]``: output tokens counted, prompt tokens
    marked present; entries with ``valid`` False are dropped."""
    out_of_range = counts.output.shape[0]                              # such entries are dropped
    output_rows = jnp.where(valid & is_output, rows, out_of_range)
    prompt_rows = jnp.where(valid & ~is_output, rows, out_of_range)
    return TokenCounts(output=counts.output.at[output_rows, tokens].add(1, mode="drop"),
                       prompt=counts.prompt.at[prompt_rows, tokens].set(True, mode="drop"))


def count_step_tokens(counts: TokenCounts, batch, cache_rows, prompt_len, penalized) -> TokenCounts:
    """Inside the step: add the batch's input tokens of the penalized rows (``prompt_len [S]``,
    ``penalized [S]`` bool per batch row) to their block-table rows ``cache_rows [S]``."""
    seq, pos, valid = token_positions(batch.cu_q_lens, batch.kv_lens, batch.tokens.shape[0])
    return add_tokens(counts, cache_rows[seq], batch.tokens, pos >= prompt_len[seq], valid & penalized[seq])


@functools.partial(jax.jit, donate_argnums=(0,))
def _reseed(counts: TokenCounts, clear_rows, rows, tokens, is_output, valid) -> TokenCounts:
    keep = jnp.ones(counts.output.shape[0], bool).at[clear_rows].set(False, mode="drop")[:, None]
    counts = TokenCounts(output=jnp.where(keep, counts.output, 0), prompt=counts.prompt & keep)
    return add_tokens(counts, rows, tokens, is_output, valid)


class PenaltyCounts:
    """The device ``TokenCounts`` of a runner and who owns each row (host bookkeeping)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.counts: TokenCounts | None = None
        self._owner: dict[int, tuple[int, int]] = {}     # row -> (id of its request, its preemptions)

    def prepare(self, plan, num_rows: int) -> TokenCounts:
        """Counts sized for ``num_rows`` block-table rows, with the rows of penalized sequences new
        to them this step cleared and seeded with their tokens before the step."""
        self._fit(num_rows)
        fresh = []
        for seq, row in zip(plan.seqs, plan.table.rows.tolist()):
            req = seq.request
            if req.params.penalized and self._owner.get(row) != (id(req), req.num_preemptions):
                self._owner[row] = (id(req), req.num_preemptions)
                fresh.append((row, req, seq.start))
        if fresh:
            self.counts = _reseed(self.counts, *_seed_arrays(fresh))
        return self.counts

    def _fit(self, num_rows: int) -> None:
        if self.counts is not None and self.counts.output.shape[0] >= num_rows:
            return
        old = self.counts
        self.counts = TokenCounts(output=jnp.zeros((num_rows, self.vocab_size), jnp.int32),
                                  prompt=jnp.zeros((num_rows, self.vocab_size), bool))
        if old is not None:
            n = old.output.shape[0]
            self.counts = TokenCounts(output=self.counts.output.at[:n].set(old.output),
                                      prompt=self.counts.prompt.at[:n].set(old.prompt))


def _seed_arrays(fresh) -> tuple[np.ndarray, ...]:
    """(rows to clear [K], then rows, tokens, is_output, valid [N]) for ``(row, request, start)``
    triples: each request's tokens before ``start``; sizes padded to powers of two."""
    clear = np.full(next_pow2(len(fresh)), -1, np.int32)
    clear[:len(fresh)] = [row for row, _, _ in fresh]
    total = sum(start for _, _, start in fresh)
    n = next_pow2(total, 64)
    rows, tokens = np.zeros(n, np.int32), np.zeros(n, np.int32)
    is_output, valid = np.zeros(n, bool), np.zeros(n, bool)
    at = 0
    for row, req, start in fresh:
        prompt = len(req.prompt_token_ids)
        rows[at:at + start] = row
        tokens[at:at + start] = req.tokens[:start]
        is_output[at:at + start] = np.arange(start) >= prompt
        valid[at:at + start] = True
        at += start
    clear[clear < 0] = np.iinfo(np.int32).max                          # padding: out of range
    return clear, rows, tokens, is_output, valid
