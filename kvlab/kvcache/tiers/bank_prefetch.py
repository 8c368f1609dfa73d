"""Copies of a pinned tier's banks started before the load that wants them (``KVTier.prefetch``).

Two kinds, as ``PinnedHostTier.load_records`` moves a bank:

- a bank wanted (almost) whole: one ``jax.device_put`` of the bank, which returns at once and
  runs beside the host;
- a bank wanted in part: the jitted slice loop that copies those rows, which holds the calling
  thread until its last copy has landed - so it runs on a worker thread, and the host goes on
  with its bookkeeping meanwhile. Several sequences may each start one for the same bank.

A copy remembers the rows of its bank written after it started (``written``, which the tier
calls before every store) and serves only rows not among them, so a record written after its
prefetch is never served stale; a load waits for a running copy before the store that writes its
bank (the slice loop reads the bank, which the store then donates). The prefetch is a hint: a
copy that failed is dropped and the load copies the rows itself.

Examples:
    >>> import numpy as np
    >>> bank = np.arange(6)
    >>> pre = BankPrefetches()
    >>> pre.start_rows(0, [4, 1], lambda rows: bank[rows] * 10)
    >>> [(copy[at].tolist(), wanted.tolist()) for copy, at, wanted in pre.take_rows(0, [1, 4])]
    [([10, 40], [0, 1])]
    >>> pre.start_rows(0, [4, 1], lambda rows: bank[rows] * 10)
    >>> pre.written(0, [4]); pre.take_rows(0, [1, 4]) is None        # row 4 changed since
    True
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np


@dataclasses.dataclass
class _Copy:
    """A started copy: the device array (or its future) and the rows written since it started."""

    data: object
    position: dict | None = None        # row -> its row in ``data``; None: the whole bank
    stale: set = dataclasses.field(default_factory=set)

    def result(self):
        """The copy's device array, waited for; None if it failed."""
        if not isinstance(self.data, concurrent.futures.Future):
            return self.data
        return None if self.data.exception() is not None else self.data.result()

    def serves(self, row: int) -> bool:
        return row not in self.stale and (self.position is None or row in self.position)


class BankPrefetches:
    """The copies started for one tier, by bank: a whole bank's (a device array) or some rows'
    (a future of a device array ``[>= len(rows), ...]`` whose row ``i`` holds ``rows[i]``)."""

    def __init__(self):
        self._whole: dict[int, _Copy] = {}
        self._rows: dict[int, list[_Copy]] = {}
        self._worker = None

    def start_whole(self, b: int, copy) -> None:
        """Start ``copy()``, the device copy of all of bank ``b``, unless one with no row
        written since is there already."""
        started = self._whole.get(b)
        if started is None or started.stale:
            self._whole[b] = _Copy(copy())

    def start_rows(self, b: int, rows, copy) -> None:
        """Start ``copy(rows)``, a device array of those rows of bank ``b`` in order, on the
        worker thread."""
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kvlab-tier-prefetch")
        rows = np.asarray(rows, np.int64)
        position = {int(r): i for i, r in enumerate(rows)}
        self._rows.setdefault(b, []).append(_Copy(self._worker.submit(copy, rows), position))

    def written(self, b: int, rows) -> None:
        """``rows`` of bank ``b`` are about to be written: no copy serves them any more, and the
        running copies of the bank are waited for (the write donates the bank they read)."""
        rows = {int(r) for r in rows}
        for started in self._rows.get(b, []) + ([self._whole[b]] if b in self._whole else []):
            started.result()
            started.stale |= rows

    def take_whole(self, b: int, rows):
        """The copy of all of bank ``b`` if it serves every one of ``rows`` (taken once), else
        None."""
        started = self._whole.pop(b, None)
        if started is None or not all(started.serves(int(r)) for r in rows):
            return None
        return started.result()

    def take_rows(self, b: int, rows):
        """``[(copy, positions, wanted)]``: the started copies of bank ``b``'s rows that together
        serve all of ``rows``, waited for, each with the rows of it to take (``positions``) and
        where they go among ``rows`` (``wanted``); None when they do not serve them all. Every
        copy of the bank is taken (once)."""
        copies = [(c, c.result()) for c in self._rows.pop(b, [])]
        copies = [(c, data) for c, data in copies if data is not None]
        picked: dict[int, tuple[list, list]] = {}
        for i, row in enumerate(int(r) for r in rows):
            j = next((j for j, (c, _) in enumerate(copies) if c.serves(row)), None)
            if j is None:
                return None
            positions, wanted = picked.setdefault(j, ([], []))
            positions.append(copies[j][0].position[row])
            wanted.append(i)
        return [(copies[j][1], np.asarray(p, np.int64), np.asarray(w, np.int64))
                for j, (p, w) in picked.items()]

    def clear(self) -> None:
        """Drop every copy, the running ones waited for."""
        for started in (c for copies in self._rows.values() for c in copies):
            started.result()
        self._rows, self._whole = {}, {}
