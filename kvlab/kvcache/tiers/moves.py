"""Page moves between the GPU and the tiers below it, as the host bookkeeping plans them and the
engine's executor makes them, in order, before the step they were planned with.

A plan's moves are one ordered list. The executor reads every ``Offload``'s device page first (one
device-to-host copy: no move of this list has written a device page yet), then runs each move's
host part in order - an offload stores its page's record into a tier slot, a demotion copies a
slot into the next tier, a load takes a slot's record - and finally writes every loaded record
into its device page (one host-to-device copy). Order is the whole contract: a slot reused later
in the list is read before it is overwritten, so the bookkeeping never pins a slot for a copy
still to come.

The host parts are record copies, collected into batches that ``run_copies`` makes together
(in several threads, say: NumPy lets go of the GIL while it copies); a copy that touches a record
an earlier copy of the batch writes, or writes one it reads, starts a new batch, so the order
holds. Loaded records are copied once, straight from their slots into the buffer the device
write takes (``rows`` rows, at least one per load: the executor pads to a power of two).

Examples:
    >>> import numpy as np
    >>> records = [np.zeros((2, 3), np.int8), np.zeros((2, 3), np.int8)]   # host, disk
    >>> moves = [Offload(page=7, slot=0), Demote(level=0, slot=0, to_slot=1), Load(level=1, slot=1, page=2)]
    >>> device_reads(moves), num_loads(moves)
    ([7], 1)
    >>> pages, loaded = run_host_moves(moves, records, read=np.full((1, 3), 5, np.int8))
    >>> pages, loaded.tolist(), records[1][1].tolist()
    ([2], [[5, 5, 5]], [5, 5, 5])
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Offload(NamedTuple):
    """Device ``page``'s record into slot ``slot`` of the first tier."""

    page: int
    slot: int

    def device_read(self) -> list[int]:
        return [self.page]

    def loads(self) -> int:
        return 0

    def run(self, copies: CopyBatch, records, read_row, loads) -> None:
        copies.add(records[0], self.slot, *next(read_row))


class Demote(NamedTuple):
    """Slot ``slot`` of tier ``level`` into slot ``to_slot`` of tier ``level + 1``."""

    level: int
    slot: int
    to_slot: int

    def device_read(self) -> list[int]:
        return []

    def loads(self) -> int:
        return 0

    def run(self, copies: CopyBatch, records, read_row, loads) -> None:
        copies.add(records[self.level + 1], self.to_slot, records[self.level], self.slot)


class Load(NamedTuple):
    """Slot ``slot`` of tier ``level`` into device ``page``."""

    level: int
    slot: int
    page: int

    def device_read(self) -> list[int]:
        return []

    def loads(self) -> int:
        return 1

    def run(self, copies: CopyBatch, records, read_row, loads) -> None:
        copies.add(loads.data, loads.row(self.page), records[self.level], self.slot)


def device_reads(moves) -> list[int]:
    """The device pages the moves read, in order (one copy before any host part runs)."""
    return [page for move in moves for page in move.device_read()]


def num_loads(moves) -> int:
    """How many records the moves load (a page loaded twice counts twice)."""
    return sum(move.loads() for move in moves)


def copy_serially(copies: list[tuple]) -> None:
    """Make ``(dst, i, src, j)`` copies ``dst[i] = src[j]`` one after the other."""
    for dst, i, src, j in copies:
        dst[i] = src[j]


class CopyBatch:
    """Record copies made together by ``run_copies`` (a callable taking a list of ``(dst, i, src,
    j)``); one that conflicts with the batch (writes what it reads or writes, reads what it
    writes) first makes the batch."""

    def __init__(self, run_copies=copy_serially):
        self.run_copies = run_copies
        self._copies: list[tuple] = []
        self._reads: set = set()
        self._writes: set = set()

    def add(self, dst, i: int, src, j: int) -> None:
        read, write = (id(src), j), (id(dst), i)
        if write in self._writes or write in self._reads or read in self._writes:
            self.flush()
        self._copies.append((dst, i, src, j))
        self._reads.add(read)
        self._writes.add(write)

    def flush(self) -> None:
        if self._copies:
            self.run_copies(self._copies)
        self._copies, self._reads, self._writes = [], set(), set()


class _LoadBuffer:
    """The loaded records, a row each; a page loaded twice reuses its row (the last load wins)."""

    def __init__(self, rows: int, like: np.ndarray):
        self.data = np.empty((rows, *like.shape[1:]), like.dtype)
        self.row_of: dict[int, int] = {}

    def row(self, page: int) -> int:
        return self.row_of.setdefault(page, len(self.row_of))


def run_host_moves(moves, records, read, rows: int | None = None,
                   run_copies=copy_serially) -> tuple[list[int], np.ndarray | None]:
    """Run the moves' host parts in order over the tiers' ``records`` (fastest first), ``read``
    holding the records of ``device_reads(moves)`` ``[n, ...]``; ``run_copies`` makes each batch
    of copies. Returns the device pages to write and a buffer ``[rows, ...]`` whose first rows
    are their records (``rows`` defaults to ``num_loads(moves)``; None when nothing is loaded)."""
    n = num_loads(moves)
    loads = _LoadBuffer(max(n, rows or 0), records[0]) if n else None
    read_rows = ((read, i) for i in range(len(read))) if read is not None else iter(())
    copies = CopyBatch(run_copies)
    for move in moves:
        move.run(copies, records, read_rows, loads)
    copies.flush()
    return ([], None) if loads is None else (list(loads.row_of), loads.data)
