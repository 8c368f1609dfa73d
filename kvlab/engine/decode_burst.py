"""Several decode steps from one plan (``kvlab.schedulers.multi_step``): the runner launches the
step's program ``num_steps`` times on the plan's one input buffer, telling launch ``j`` its
offset (a device scalar, made once). Inside, ``decode_at`` moves the batch ``j`` positions on:
each sequence's token is the one its block-table row sampled last (the previous launch's), its
write slot the one the page table gives the new position, its KV length ``j`` longer. Each launch
is an ordinary step executable, so the device runs them back to back, and the host plans, packs
and reads once for all of them.

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab.attention.batch import RaggedBatch
    >>> batch = RaggedBatch(tokens=jnp.array([5, 6, 0]), positions=jnp.array([9, 3, 0]),
    ...                     slots=jnp.array([41, 19, -1]), cu_q_lens=jnp.array([0, 1, 2, 2]),
    ...                     kv_lens=jnp.array([10, 4, 0]), page_table=jnp.array([[3, 5], [4, 0], [0, 0]]),
    ...                     num_seqs=jnp.int32(2), logits_indices=jnp.array([0, 1, 1]), decode_only=True)
    >>> last = jnp.array([0, 8, 0, 7])                    # the token each block-table row sampled last
    >>> step = decode_at(batch, jnp.int32(1), last, cache_rows=jnp.array([3, 1, 0]), page_size=8)
    >>> step.tokens.tolist(), step.positions.tolist(), step.slots.tolist(), step.kv_lens.tolist()
    ([7, 8, 0], [10, 4, 0], [42, 36, -1], [11, 5, 0])
    >>> decode_at(batch, jnp.int32(0), last, jnp.array([3, 1, 0]), 8).tokens.tolist()   # the first
    [5, 6, 0]
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from kvlab.attention.batch import RaggedBatch


def decode_at(batch: RaggedBatch, offset, last, cache_rows, page_size: int) -> RaggedBatch:
    """Decode step ``offset`` (a device int32 scalar) of a multi-step plan whose first step is
    ``batch`` (decodes only; its page table covering every step's position): each real token
    (``slots >= 0``) ``offset`` positions further on, written where ``page_table`` puts that
    position, with ``kv_lens`` ``offset`` longer for the rows in use; from ``offset`` 1 on, the
    token is ``last [R]`` at its sequence's block-table row (``cache_rows [S]``)."""
    num_tokens, num_rows = batch.tokens.shape[0], batch.kv_lens.shape[0]
    live = batch.slots >= 0
    row = jnp.searchsorted(batch.cu_q_lens, jnp.arange(num_tokens), side="right") - 1
    row = jnp.clip(row, 0, num_rows - 1)
    positions = jnp.where(live, batch.positions + offset, batch.positions)
    page = batch.page_table[row, jnp.minimum(positions // page_size, batch.page_table.shape[1] - 1)]
    sampled = last[cache_rows[row]].astype(batch.tokens.dtype)
    return dataclasses.replace(
        batch, tokens=jnp.where(live & (offset > 0), sampled, batch.tokens), positions=positions,
        slots=jnp.where(live, page * page_size + positions % page_size, -1),
        kv_lens=jnp.where(batch.kv_lens > 0, batch.kv_lens + offset, 0))


def counted(sampling, offset):
    """``sampling`` for decode step ``offset``: each row samples its output token ``offset``
    places further on (its random stream's counter)."""
    if sampling is None:
        return None
    return dataclasses.replace(sampling, counter=sampling.counter + offset)
