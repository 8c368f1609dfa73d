"""The device copy of a cache's block table, updated incrementally.

The cache keeps its ``BlockTable`` on the host (NumPy) and records the entries it writes; each
plan brings the entries written since the previous plan (``StepTable.changes``). ``sync`` scatters
just those into the device copy (padded to a power of two, out-of-range padding dropped), so a
decode step moves a few bytes per sequence instead of the whole page table. The device copy has
a fixed shape (``num_rows`` x ``num_cols``) so the step never recompiles for it; it is re-read
whole only when the cache reallocated its table, and grows (doubling) only when the cache holds
more rows than it has.

Examples:
    >>> import numpy as np
    >>> from types import SimpleNamespace as NS
    >>> host = np.array([[3, 4, 0, 0], [7, 0, 0, 0]], np.int32)
    >>> changes = NS(rows=np.array([1]), cols=np.array([1]), pages=np.array([9]), resized=True)
    >>> dev = DeviceBlockTable(num_cols=4, num_rows=2)
    >>> np.asarray(dev.sync(NS(table=host, changes=changes)))[1, :2].tolist()
    [7, 0]
    >>> host[1, 1] = 9
    >>> changes = NS(rows=np.array([1]), cols=np.array([1]), pages=np.array([9]), resized=False)
    >>> np.asarray(dev.sync(NS(table=host, changes=changes)))[1, :2].tolist()
    [7, 9]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.schedulers.shapes import next_pow2


# Not donated: donating would make the host wait until the previous step's gather has read the
# table; a fresh copy of a few MiB costs the device microseconds and the host nothing.
@jax.jit
def _scatter(table, rows, cols, pages):
    return table.at[rows, cols].set(pages, mode="drop")


def gather_page_table(table, cache_rows, kv_lens, page_size: int, num_cols: int):
    """The step's page table ``[S, num_cols]`` from the device copy ``table [R, W]``: row s is
    block-table row ``cache_rows[s]``; entries past ``ceil(kv_lens[s] / page_size)`` (stale, or
    past the width) read page 0. Traced inside the jitted step."""
    rows = table[cache_rows]
    if num_cols > rows.shape[1]:
        rows = jnp.pad(rows, ((0, 0), (0, num_cols - rows.shape[1])))
    rows = rows[:, :num_cols]
    in_use = jnp.arange(num_cols)[None, :] < (kv_lens[:, None] + page_size - 1) // page_size
    return jnp.where(in_use, rows, 0)


class DeviceBlockTable:
    """A ``[num_rows, num_cols]`` int32 device array mirroring the host block table."""

    def __init__(self, *, num_cols: int, num_rows: int):
        self.num_cols, self.num_rows = num_cols, num_rows
        self.array = None

    def sync(self, step_table) -> jax.Array:
        """Apply ``step_table.changes`` (or re-read ``step_table.table`` whole) and return the array."""
        host, changes = step_table.table, step_table.changes
        if host.shape[0] > self.num_rows:
            self.num_rows = next_pow2(host.shape[0])
            self.array = None
        if self.array is None or changes.resized:
            self.array = jax.device_put(self._whole(host))
        elif len(changes.rows):
            n = next_pow2(len(changes.rows), 64)
            rows = np.full(n, self.num_rows, np.int32)          # padding: out of range, dropped
            cols, pages = np.zeros(n, np.int32), np.zeros(n, np.int32)
            rows[:len(changes.rows)], cols[:len(changes.rows)] = changes.rows, changes.cols
            pages[:len(changes.rows)] = changes.pages
            self.array = _scatter(self.array, rows, cols, pages)
        return self.array

    def _whole(self, host: np.ndarray) -> np.ndarray:
        out = np.zeros((self.num_rows, self.num_cols), np.int32)
        r, c = min(host.shape[0], self.num_rows), min(host.shape[1], self.num_cols)
        out[:r, :c] = host[:r, :c]
        return out
