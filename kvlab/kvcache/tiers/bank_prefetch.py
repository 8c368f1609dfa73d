"""Copies of a pinned tier's banks started before the load that wants them (``KVTier.prefetch``).

Two kinds, as ``PinnedHostTier.load_records`` moves a bank:

- a bank wanted (almost) whole: one ``jax.device_put`` of the bank, which returns at once and
  runs beside the host;
- a bank wanted in part: the jitted slice loop that copies those rows, which holds the calling
  thread until its last copy has landed - so it runs on a worker thread, and the host goes on
  with its bookkeeping meanwhile.

A copy is taken by the load only if its bank is the same array it was started from (a store into
a bank makes a new array), so a record written after its prefetch is never served stale. Before a
bank is written or a copy dropped, a copy still running on the worker is waited for: the slice
loop reads the bank, which the store then donates.

Examples:
    >>> import numpy as np
    >>> bank = np.arange(6)
    >>> pre = BankPrefetches()
    >>> pre.start_rows(0, bank, [4, 1], lambda rows: bank[rows] * 10)
    >>> copy, at = pre.take_rows(0, bank, [1, 4])
    >>> copy[at].tolist(), pre.take_rows(0, bank, [1])       # taken once
    ([10, 40], None)
"""

from __future__ import annotations

import concurrent.futures

import numpy as np


class BankPrefetches:
    """The copies started for one tier, by bank: whole (a device array) or some rows (a future of
    a device array ``[>= len(rows), ...]``, row ``i`` holding ``rows[i]``)."""

    def __init__(self):
        self._whole: dict = {}      # bank index -> (bank array, its device copy)
        self._rows: dict = {}       # bank index -> (bank array, {row: position}, future)
        self._worker = None

    def start_whole(self, b: int, bank, copy) -> None:
        """Start ``copy()`` (the device copy of all of ``bank``, bank ``b``) unless one of this
        very bank is there already."""
        if self._whole.get(b, (None,))[0] is not bank:
            self._whole[b] = (bank, copy())

    def start_rows(self, b: int, bank, rows, copy) -> None:
        """Start ``copy(rows)`` (a device array of those rows of ``bank``, bank ``b``, in order)
        on the worker thread, after any copy of bank ``b`` still running."""
        self.forget(b)
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kvlab-tier-prefetch")
        rows = np.asarray(rows, np.int64)
        at = {int(r): i for i, r in enumerate(rows)}
        self._rows[b] = (bank, at, self._worker.submit(copy, rows))

    def take_whole(self, b: int, bank):
        """The device copy of bank ``b`` if it was started from ``bank`` (taken once), else None."""
        started, copy = self._whole.pop(b, (None, None))
        return copy if started is bank else None

    def take_rows(self, b: int, bank, rows):
        """``(copy, positions)``: the started copy of bank ``b``'s rows, waited for, and where
        each of ``rows`` is in it, if it was started from ``bank`` and holds every one of them
        (taken once); else None (the copy is dropped)."""
        entry = self._rows.pop(b, None)
        if entry is None:
            return None
        started, at, future = entry
        copy = future.result()
        if started is not bank or any(int(r) not in at for r in rows):
            return None
        return copy, np.array([at[int(r)] for r in rows], np.int64)

    def forget(self, b: int) -> None:
        """Drop bank ``b``'s copies (it is about to be written), a running one waited for."""
        self._whole.pop(b, None)
        entry = self._rows.pop(b, None)
        if entry is not None:
            entry[2].result()

    def clear(self) -> None:
        """Drop every copy, the running ones waited for."""
        for b in list(self._rows):
            self.forget(b)
        self._whole.clear()
