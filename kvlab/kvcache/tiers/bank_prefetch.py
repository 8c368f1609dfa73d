"""Copies of a pinned tier's banks started before the load that wants them (``KVTier.prefetch``).

Two kinds, as ``PinnedHostTier.load_records`` moves a bank:

- a bank wanted (almost) whole: one ``jax.device_put`` of the bank, which returns at once and
  runs beside the host;
- the banks wanted in part: the jitted slice loops that copy those rows into the load's own part
  arrays (the same shapes, so nothing new to compile), which hold the calling thread
  until their last copy has landed - so they run on a worker thread, and the host goes on with its
  bookkeeping meanwhile. Several sequences may each start one for the same bank.

A copy remembers the rows of its banks written after it started (``written``, which the tier
calls before every store) and serves only rows not among them, so a record written after its
prefetch is never served stale; a load waits for a running copy before the store that writes its
bank (the slice loop reads the bank, which the store then donates). The prefetch is a hint: a
copy that failed is dropped and the load copies the rows itself.

Examples:
    >>> import numpy as np
    >>> bank = np.arange(6)
    >>> pre = BankPrefetches()
    >>> copy = lambda: bank[[4, 1]] * 10                  # rows 4 and 1 of bank 0, at 0 and 1
    >>> pre.start_rows([(0, [4, 1], [0, 1])], copy)
    >>> [(data[at].tolist(), wanted.tolist(), banks) for data, at, wanted, banks in pre.take_rows(0, [1, 4])]
    [([10, 40], [0, 1], {0})]
    >>> pre.start_rows([(0, [4, 1], [0, 1])], copy)
    >>> pre.written(0, [4]); pre.take_rows(0, [1, 4]) is None        # row 4 changed since
    True
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np


@dataclasses.dataclass
class _Copy:
    """A started copy: the device array (or its future) and the rows written since it started,
    as ``(bank, row)`` pairs."""

    data: object
    position: dict | None = None        # (bank, row) -> its row in ``data``; None: a whole bank
    stale: set = dataclasses.field(default_factory=set)

    def result(self):
        """The copy's device array, waited for; None if it failed."""
        if not isinstance(self.data, concurrent.futures.Future):
            return self.data
        return None if self.data.exception() is not None else self.data.result()

    def serves(self, b: int, row: int) -> bool:
        return (b, row) not in self.stale and (self.position is None or (b, row) in self.position)


class BankPrefetches:
    """The copies started for one tier, by bank: a whole bank's (a device array) or some rows'
    of one or more banks (a future of a device array ``[n, ...]`` with each row where its
    ``start_rows`` call put it)."""

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

    def start_rows(self, parts, copy) -> None:
        """Start ``copy()`` on the worker thread: a device array holding, for each ``(bank, rows,
        positions)`` of ``parts``, row ``rows[i]`` of that bank at ``positions[i]``."""
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kvlab-tier-copy")
        position = {(b, int(r)): int(p) for b, rows, positions in parts for r, p in zip(rows, positions)}
        started = _Copy(self._worker.submit(copy), position)
        for b, _, _ in parts:
            self._rows.setdefault(b, []).append(started)

    def covers(self, b: int, rows) -> bool:
        """Whether the started copies of bank ``b``'s rows serve every one of ``rows`` (a second
        prefetch of them would copy them again)."""
        copies = self._rows.get(b, [])
        return all(any(c.serves(b, int(r)) for c in copies) for r in rows)

    def written(self, b: int, rows) -> None:
        """``rows`` of bank ``b`` are about to be written: no copy serves them any more, and the
        running copies of the bank are waited for (the write donates the bank they read)."""
        rows = {(b, int(r)) for r in rows}
        for started in self._rows.get(b, []) + ([self._whole[b]] if b in self._whole else []):
            started.result()
            started.stale |= rows

    def take_whole(self, b: int, rows):
        """The copy of all of bank ``b`` if it serves every one of ``rows`` (taken once), else
        None."""
        started = self._whole.pop(b, None)
        if started is None or not all(started.serves(b, int(r)) for r in rows):
            return None
        return started.result()

    def take_rows(self, b: int, rows):
        """``[(copy, positions, wanted, banks)]``: the started copies of bank ``b``'s rows that
        together serve all of ``rows``, waited for, each with the rows of it to take
        (``positions``), where they go among ``rows`` (``wanted``) and the banks it holds rows of;
        None when they do not serve them all. Every copy of the bank is taken (once for this bank;
        a copy of several banks stays for the others)."""
        copies = [(c, c.result()) for c in self._rows.pop(b, [])]
        copies = [(c, data) for c, data in copies if data is not None]
        picked: dict[int, tuple[list, list]] = {}
        for i, row in enumerate(int(r) for r in rows):
            j = next((j for j, (c, _) in enumerate(copies) if c.serves(b, row)), None)
            if j is None:
                return None
            positions, wanted = picked.setdefault(j, ([], []))
            positions.append(copies[j][0].position[b, row])
            wanted.append(i)
        return [(copies[j][1], np.asarray(p, np.int64), np.asarray(w, np.int64),
                 {bank for bank, _ in copies[j][0].position}) for j, (p, w) in picked.items()]

    def clear(self) -> None:
        """Drop every copy, the running ones waited for."""
        for started in {id(c): c for copies in self._rows.values() for c in copies}.values():
            started.result()
        self._rows, self._whole = {}, {}
