"""BlockTable: the persistent page table of a cache, one NumPy row per live sequence.

``array`` is ``[rows, width]`` int32; row ``row_of(seq)`` holds the sequence's page-table row
(token ``j`` lives in page ``array[row, j // page_size]``) and ``num_pages[row]`` says how many of
its entries are in use (entries past it are stale: anything). The caches update it in place
whenever a sequence's pages change - never rebuilt per step - so a step reads its rows straight
from it. It grows by doubling (rows or width) when needed; freed rows are reused, lowest first.

Every written cell is recorded: ``drain_changes()`` returns the cells written since the previous
call (``rows``, ``cols``, ``pages``: one entry per cell, its current value) so a device copy can
apply just those; ``resized`` says the array was reallocated, and the copy must re-read it whole.

Examples:
    >>> table = BlockTable(rows=2, width=2)
    >>> a = table.add("a"); table.append(a, [7, 8, 9])     # the width doubles to 4
    >>> table.pages(a).tolist(), table.array.shape
    ([7, 8, 9], (2, 4))
    >>> ch = table.drain_changes()
    >>> ch.rows.tolist(), ch.cols.tolist(), ch.pages.tolist(), ch.resized
    ([0, 0, 0], [0, 1, 2], [7, 8, 9], True)
    >>> table.write(a, 1, [5]); table.write(a, 1, [6])     # a cell written twice: latest wins
    >>> ch = table.drain_changes(); ch.cols.tolist(), ch.pages.tolist(), ch.resized
    ([1], [6], False)
    >>> table.remove("a"); table.add("b")                  # the lowest free row again
    0
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np


@dataclasses.dataclass(frozen=True)
class TableChanges:
    """Cells written since the previous drain: ``rows``, ``cols``, ``pages`` are ``[K]`` int32,
    one entry per distinct cell with its current value (a cell written twice appears once, with
    the latest value). ``resized``: the array was reallocated meanwhile; re-read it whole."""

    rows: np.ndarray
    cols: np.ndarray
    pages: np.ndarray
    resized: bool


class BlockTable:
    """One int32 page-table row per live sequence; see the module docstring.

    array: ``[rows, width]`` int32; num_pages: ``[rows]`` int32, entries in use per row (0 for a
    free row).
    """

    def __init__(self, rows: int = 8, width: int = 16):
        if rows < 1 or width < 1:
            raise ValueError(f"a block table needs at least one row and column, got {rows}x{width}")
        self.array = np.zeros((rows, width), np.int32)
        self.num_pages = np.zeros(rows, np.int32)
        self._rows: dict[object, int] = {}
        self._free_rows = list(range(rows))          # a heap: the lowest free row first
        self._log: list[tuple[int, int, int]] = []   # (row, first column, count) per write
        self._resized = False

    def __len__(self) -> int:
        """Rows in use (live sequences)."""
        return len(self._rows)

    def __contains__(self, seq_id) -> bool:
        return seq_id in self._rows

    def row_of(self, seq_id) -> int:
        """The row of live sequence ``seq_id`` (KeyError if it has none)."""
        return self._rows[seq_id]

    def pages(self, row: int) -> np.ndarray:
        """The entries in use of ``row``: ``[num_pages[row]]`` int32, a view (do not write it)."""
        return self.array[row, :self.num_pages[row]]

    # ---- rows ------------------------------------------------------------------------------------
    def add(self, seq_id) -> int:
        """Give ``seq_id`` the lowest free row (empty: ``num_pages`` 0); returns it."""
        if seq_id in self._rows:
            raise ValueError(f"sequence {seq_id!r} already has row {self._rows[seq_id]}")
        if not self._free_rows:
            self._grow(2 * self.array.shape[0], self.array.shape[1])
        row = heapq.heappop(self._free_rows)
        self._rows[seq_id] = row
        return row

    def remove(self, seq_id) -> None:
        """Free ``seq_id``'s row (its cells keep their values; nothing is written)."""
        row = self._rows.pop(seq_id)
        self.num_pages[row] = 0
        heapq.heappush(self._free_rows, row)

    # ---- cells -----------------------------------------------------------------------------------
    def append(self, row: int, pages) -> None:
        """Add ``pages`` after the entries in use of ``row``."""
        n, k = int(self.num_pages[row]), len(pages)
        if k == 1 and n < self.array.shape[1]:      # the common decode step: one page
            self.array[row, n] = pages[0]
            self._log.append((row, n, 1))
        else:
            self.write(row, n, pages)
        self.num_pages[row] = n + k

    def write(self, row: int, col: int, pages) -> None:
        """Overwrite cells ``col .. col + len(pages) - 1`` of ``row`` (growing the width if
        needed; ``num_pages`` is unchanged: ``append`` extends a row)."""
        k = len(pages)
        if k == 0:
            return
        if col + k > self.array.shape[1]:
            width = self.array.shape[1]
            while width < col + k:
                width *= 2
            self._grow(self.array.shape[0], width)
        self.array[row, col:col + k] = pages
        self._log.append((row, col, k))

    def truncate(self, row: int, n: int) -> None:
        """Keep only the first ``n`` entries of ``row`` in use (nothing is written)."""
        self.num_pages[row] = min(n, int(self.num_pages[row]))

    def _grow(self, rows: int, width: int) -> None:
        old_rows, old_width = self.array.shape
        array = np.zeros((rows, width), np.int32)
        array[:old_rows, :old_width] = self.array
        self.array = array
        if rows > old_rows:
            self.num_pages = np.concatenate([self.num_pages, np.zeros(rows - old_rows, np.int32)])
            for r in range(old_rows, rows):
                heapq.heappush(self._free_rows, r)
        self._resized = True

    def drain_changes(self) -> TableChanges:
        """The cells written since the previous call (see ``TableChanges``); resets the record."""
        log, self._log = self._log, []
        resized, self._resized = self._resized, False
        if not log:
            empty = np.zeros(0, np.int32)
            return TableChanges(empty, empty, empty, resized)
        rows, starts, counts = (np.fromiter(c, np.int64, len(log)) for c in zip(*log))
        first = np.cumsum(counts) - counts
        run = np.repeat(np.arange(len(log)), counts)
        cols = starts[run] + np.arange(int(counts.sum())) - first[run]
        width = self.array.shape[1]
        cells = np.unique(rows[run] * width + cols)
        rows, cols = (cells // width).astype(np.int32), (cells % width).astype(np.int32)
        return TableChanges(rows, cols, self.array[rows, cols], resized)
