"""Several decode steps in one launch (``kvlab.schedulers.multi_step``): inside the jitted step,
the model runs ``num_steps`` times over a decode-only batch, each step's sampled tokens the next
step's inputs, one position further on, written to the slots the block table gives them.

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab.attention.batch import RaggedBatch
    >>> batch = RaggedBatch(tokens=jnp.array([5, 6, 0]), positions=jnp.array([9, 3, 0]),
    ...                     slots=jnp.array([41, 19, -1]), cu_q_lens=jnp.array([0, 1, 2, 2]),
    ...                     kv_lens=jnp.array([10, 4, 0]), page_table=jnp.array([[3, 5], [4, 0], [0, 0]]),
    ...                     num_seqs=jnp.int32(2), logits_indices=jnp.array([0, 1, 1]), decode_only=True)
    >>> step = next_decode(batch, sampled=jnp.array([7, 8, 0]), page_size=8)
    >>> step.tokens.tolist(), step.positions.tolist(), step.slots.tolist(), step.kv_lens.tolist()
    ([7, 8, 0], [10, 4, 0], [42, 36, -1], [11, 5, 0])
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvlab.attention.batch import RaggedBatch


def next_decode(batch: RaggedBatch, sampled, page_size: int) -> RaggedBatch:
    """The decode step after ``batch``: each real token (``slots >= 0``) replaced by the token
    its sequence sampled (``sampled [S]``, by batch row), one position further on, written to
    the slot ``page_table`` gives that position; ``kv_lens`` one longer for the rows in use.
    The page table must already cover the new positions."""
    num_tokens, num_rows = batch.tokens.shape[0], batch.kv_lens.shape[0]
    live = batch.slots >= 0
    row = jnp.searchsorted(batch.cu_q_lens, jnp.arange(num_tokens), side="right") - 1
    row = jnp.clip(row, 0, num_rows - 1)
    positions = jnp.where(live, batch.positions + 1, batch.positions)
    page = batch.page_table[row, jnp.minimum(positions // page_size, batch.page_table.shape[1] - 1)]
    return dataclasses.replace(
        batch, tokens=jnp.where(live, sampled[row], batch.tokens).astype(batch.tokens.dtype),
        positions=positions, slots=jnp.where(live, page * page_size + positions % page_size, -1),
        kv_lens=jnp.where(batch.kv_lens > 0, batch.kv_lens + 1, 0))


def run_decode_steps(step, batch: RaggedBatch, storage, sampling, num_steps: int, page_size: int):
    """Run ``step(batch, storage, sampling) -> (tokens [S], storage)`` ``num_steps`` times from
    ``batch`` (a decode-only batch whose page table covers ``num_steps`` new positions per row),
    the sampling counters one further each step; returns (tokens ``[num_steps * S]``, step j's
    at ``[j * S, (j + 1) * S)``; the last step's tokens [S]; the storage)."""
    tokens, storage = step(batch, storage, sampling)
    out = jnp.zeros((num_steps,) + tokens.shape, tokens.dtype).at[0].set(tokens)

    def body(j, carry):
        batch, storage, tokens, out = carry
        batch = next_decode(batch, tokens, page_size)
        tokens, storage = step(batch, storage, _counted(sampling, j))
        return batch, storage, tokens, out.at[j].set(tokens)

    _, storage, tokens, out = jax.lax.fori_loop(1, num_steps, body, (batch, storage, tokens, out))
    return out.reshape(-1), tokens, storage


def _counted(sampling, j):
    """``sampling`` for the ``j``-th step after the first: each row samples its output token j
    places further on (its random stream's counter)."""
    if sampling is None:
        return None
    return dataclasses.replace(sampling, counter=sampling.counter + j)
