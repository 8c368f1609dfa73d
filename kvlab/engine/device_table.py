"""The device copy of a cache's block table, updated incrementally inside the step.

The cache keeps its ``BlockTable`` on the host (NumPy) and records the entries it writes; each
plan brings the entries written since the previous plan (``StepTable.changes``). ``stage`` puts
them in the step's input buffer (up to ``change_capacity`` cells, padding rows out of range) and
the jitted step applies them (``apply_changes``) to the donated table before it gathers its
page table from it, so a decode step moves a few bytes per sequence and no extra dispatch. The
table has a fixed shape (``num_rows`` x ``num_cols``) so the step never recompiles for it; it is
re-read whole only when the cache reallocated its table, grows (doubling) only when the cache
holds more rows than it has, and more changes than fit are scattered by a call of their own.

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


def apply_changes(table, changes):
    """``table [R, W]`` with ``changes [3, C]`` (rows, cols, pages) written; rows out of range
    (padding) are dropped. Traced inside the step, or run alone by ``_scatter``."""
    return table.at[changes[0], changes[1]].set(changes[2], mode="drop")


# Not donated: it runs outside a step (a resize, an overflow, ``sync``); donating would make the
# host wait until the previous step has read the table.
_scatter = jax.jit(apply_changes)


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
    """A ``[num_rows, num_cols]`` int32 device array mirroring the host block table.

    ``array`` is the current copy; a step that applied staged changes hands its output back
    (the runner sets ``array``). change_capacity: cells a step's input buffer has room for.
    """

    def __init__(self, *, num_cols: int, num_rows: int, change_capacity: int = 64):
        self.num_cols, self.num_rows, self.change_capacity = num_cols, num_rows, change_capacity
        self.array = None

    def stage(self, step_table, rows: np.ndarray, cols: np.ndarray, pages: np.ndarray) -> jax.Array:
        """Bring the copy up to ``step_table`` except for the changes written into ``rows``,
        ``cols``, ``pages`` (``[change_capacity]`` views of the step's input buffer: the step
        applies them); returns the array the step reads."""
        host, changes = step_table.table, step_table.changes
        if host.shape[0] > self.num_rows:
            self.num_rows = next_pow2(host.shape[0])
            self.array = None
        rows[:] = self.num_rows                                  # padding: out of range, dropped
        if self.array is None or changes.resized:
            self.array = jax.device_put(self._whole(host))
        elif len(changes.rows) > self.change_capacity:
            self.array = _scatter(self.array, self._padded(changes))
        else:
            n = len(changes.rows)
            rows[:n], cols[:n], pages[:n] = changes.rows, changes.cols, changes.pages
        return self.array

    def sync(self, step_table) -> jax.Array:
        """Apply ``step_table.changes`` now (outside a step) and return the array."""
        rows, cols, pages = np.zeros((3, self.change_capacity), np.int32)
        array = self.stage(step_table, rows, cols, pages)
        self.array = _scatter(array, np.stack([rows, cols, pages]))
        return self.array

    def _padded(self, changes) -> np.ndarray:
        n = len(changes.rows)
        out = np.zeros((3, next_pow2(n, 64)), np.int32)
        out[0] = self.num_rows
        out[:, :n] = changes.rows, changes.cols, changes.pages
        return out

    def _whole(self, host: np.ndarray) -> np.ndarray:
        out = np.zeros((self.num_rows, self.num_cols), np.int32)
        r, c = min(host.shape[0], self.num_rows), min(host.shape[1], self.num_cols)
        out[:r, :c] = host[:r, :c]
        return out
