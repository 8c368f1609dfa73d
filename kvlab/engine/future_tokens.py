"""Future tokens: a token that a step still running samples, fed to the next step on the device.

An engine that plans step N+1 while step N runs (``Engine(steps_ahead=1)``) packs step N+1
before it has read the tokens step N samples. The plan marks each such token ``FUTURE_TOKEN``
(``kvlab.schedulers.plan``); ``mark_future`` writes ``-(r + 1)`` in its place, ``r`` being the
sequence's block-table row; inside the jitted step ``resolve_future`` reads it from ``last [R]``,
the token each block-table row sampled last, and ``record_sampled`` updates ``last`` with the
step's own tokens. It is SGLang's future-token map keyed by block-table row, so it needs no
bookkeeping per step: a row belongs to one sequence at a time, and the device runs steps in order.

Examples:
    >>> import numpy as np, jax.numpy as jnp
    >>> tokens = np.array([5, 6, -1, -1], np.int32)           # two prefill tokens, two decodes
    >>> mark_future(tokens, lens=np.array([2, 1, 1]), rows=np.array([0, 3, 1]))
    >>> tokens.tolist()
    [5, 6, -4, -2]
    >>> resolve_future(jnp.asarray(tokens), jnp.array([70, 71, 72, 73])).tolist()
    [5, 6, 73, 71]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mark_future(tokens: np.ndarray, *, lens: np.ndarray, rows: np.ndarray) -> None:
    """Host side, in place: ``tokens [T]`` (sequences' tokens back to back, ``lens [S]`` each)
    with every negative entry (a future token) replaced by ``-(rows[s] + 1)``, ``s`` its
    sequence and ``rows [S]`` the sequences' block-table rows."""
    future = np.flatnonzero(tokens < 0)
    if len(future):
        seq = np.searchsorted(np.cumsum(lens), future, side="right")
        tokens[future] = -1 - rows[seq]


def resolve_future(tokens, last):
    """Inside the step: ``tokens [T]`` with each ``-(r + 1)`` replaced by ``last[r]``."""
    return jnp.where(tokens < 0, last[jnp.maximum(-1 - tokens, 0)], tokens)


def record_sampled(last, cache_rows, kv_lens, sampled):
    """Inside the step: ``last [R]`` with ``sampled [S]`` written at ``cache_rows [S]`` for the
    batch rows in use (``kv_lens [S]`` > 0; padding and idle rows are dropped)."""
    rows = jnp.where(kv_lens > 0, cache_rows, last.shape[0])
    return last.at[rows].set(sampled[:rows.shape[0]], mode="drop")


class LastTokens:
    """The device array ``last [R]`` int32 of a runner, grown (keeping its entries) with the
    block table's rows."""

    def __init__(self):
        self.array = None

    def fit(self, num_rows: int) -> jax.Array:
        """The array, at least ``num_rows`` long."""
        if self.array is None:
            self.array = jnp.zeros(num_rows, jnp.int32)
        elif self.array.shape[0] < num_rows:
            self.array = jnp.zeros(num_rows, jnp.int32).at[:self.array.shape[0]].set(self.array)
        return self.array
