"""Page moves between the GPU and the tiers below it, as the host bookkeeping plans them and the
engine's executor makes them (``make_moves``) before the step they were planned with.

A plan's moves are one ordered list, in the order their slots were reserved; that order is the
whole contract: a slot reused later in the list is read before it is overwritten, so the
bookkeeping never pins a slot for a copy still to come. ``make_moves`` keeps it while copying in
batches:

- the device pages that ``Offload`` moves read are read first, all at once: an offload copies
  the page as it was before the plan, whatever a load writes into that page;
- the moves are cut into *phases*, each as long as no tier slot in it is both read and written
  or written twice, so the moves of a phase may run in any order; each phase runs its
  demotions, its offloads and its loads as one batched copy per tier;
- the loaded records reach the device by ``write_device``, piece by piece as the tier hands
  them over (``load_pieces``), in their phase.

The copies themselves are the tiers' (``KVTier.store_records``, ``load_pieces``,
``read_rows``, ``write_rows``): NumPy copies for a NumPy tier, jitted slice loops for a tier in
pinned host memory (``PinnedHostTier``).

Examples:
    >>> import numpy as np
    >>> from kvlab.kvcache.tiers import HostMemoryTier
    >>> host, disk = HostMemoryTier(2, np.zeros((3,), np.int8)), HostMemoryTier(2, np.zeros((3,), np.int8))
    >>> moves = [Offload(page=7, slot=0), Demote(level=0, slot=0, to_slot=1), Load(level=1, slot=1, page=2)]
    >>> phases(moves)                      # the demotion reads what the offload writes
    [[Offload(page=7, slot=0)], [Demote(level=0, slot=0, to_slot=1)], [Load(level=1, slot=1, page=2)]]
    >>> written = []
    >>> make_moves(moves, [host, disk], read_device=lambda pages: np.full((len(pages), 3), 5, np.int8),
    ...            write_device=lambda pages, data: written.append((pages, np.asarray(data).tolist())))
    >>> written, disk.records[1].tolist()
    ([([2], [[5, 5, 5]])], [5, 5, 5])
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Offload(NamedTuple):
    """Device ``page``'s record into slot ``slot`` of the first tier."""

    page: int
    slot: int

    def reads(self) -> tuple:
        return ("device", self.page),

    def writes(self) -> tuple:
        return (0, self.slot),


class Demote(NamedTuple):
    """Slot ``slot`` of tier ``level`` into slot ``to_slot`` of tier ``level + 1``."""

    level: int
    slot: int
    to_slot: int

    def reads(self) -> tuple:
        return (self.level, self.slot),

    def writes(self) -> tuple:
        return (self.level + 1, self.to_slot),


class Load(NamedTuple):
    """Slot ``slot`` of tier ``level`` into device ``page``."""

    level: int
    slot: int
    page: int

    def reads(self) -> tuple:
        return (self.level, self.slot),

    def writes(self) -> tuple:
        return ("device", self.page),


def _tier_locations(locations) -> tuple:
    return tuple(loc for loc in locations if loc[0] != "device")


def phases(moves) -> list[list]:
    """``moves`` cut, in order, into runs in which no tier slot is both read and written or
    written twice (so each run's moves may be made in any order). Device pages do not cut a
    run: ``make_moves`` reads every device page going out before the first phase, so a page
    evicted to a tier and a page loaded into it in the same plan travel in the same phase.
    Loads alone (a re-asked document) are one run: they write no tier slot."""
    if all(type(move) is Load for move in moves):
        return [list(moves)] if len(moves) else []
    out, reads, writes = [], set(), set()
    for move in moves:
        r, w = _tier_locations(move.reads()), _tier_locations(move.writes())
        if not out or not (writes.isdisjoint(w) and reads.isdisjoint(w) and writes.isdisjoint(r)):
            out.append([])
            reads, writes = set(), set()
        out[-1].append(move)
        reads.update(r)
        writes.update(w)
    return out


def num_device_copies(moves) -> int:
    """How many records the moves copy across the host link (offloads and loads)."""
    return sum(1 for m in moves for loc in m.reads() + m.writes() if loc[0] == "device")


def make_moves(moves, tiers, read_device, write_device) -> None:
    """Make ``moves`` over ``tiers`` (fastest first). ``read_device(pages) -> [>= n, ...]``
    gives device pages' records (an array the first tier's ``store_records`` takes);
    ``write_device(pages, data [>= n, ...])`` stores loaded records into device pages (row
    ``i`` into ``pages[i]``), and ``write_device(pages, data, rows)`` row ``rows[i]`` of
    ``data`` into ``pages[i]``: once per piece of a group of loads (a tier's ``load_pieces``),
    as each piece comes, so a piece already on its way to the device is written (queued on the
    device behind its copy) while the tier still gathers the next."""
    out_pages = [m.page for m in moves if isinstance(m, Offload)]
    read = read_device(out_pages) if out_pages else None
    row_of = {page: i for i, page in enumerate(out_pages)}
    for phase in phases(moves):
        for level in sorted({m.level for m in phase if isinstance(m, Demote)}):
            demote = [m for m in phase if isinstance(m, Demote) and m.level == level]
            rows = tiers[level].read_rows([m.slot for m in demote])
            tiers[level + 1].write_rows([m.to_slot for m in demote], rows)
        offload = [m for m in phase if isinstance(m, Offload)]
        if offload:
            tiers[0].store_records([m.slot for m in offload], read, [row_of[m.page] for m in offload])
        for level in sorted({m.level for m in phase if isinstance(m, Load)}):
            load = [m for m in phase if isinstance(m, Load) and m.level == level]
            pages = np.asarray([m.page for m in load], np.int64)
            for piece in tiers[level].load_pieces([m.slot for m in load]):
                if piece.positions is None:
                    write_device(pages.tolist(), piece.data)
                else:
                    at = np.asarray(piece.positions, np.int64)
                    write_device(pages[at].tolist(), piece.data, piece.rows)
