"""A KV tier in pinned (page-locked) host memory, held as a JAX array of memory kind
``pinned_host``: the device copies records in and out by DMA, with no host gather and no staging
copy (TensorRT-LLM's pinned host pool, vLLM's and SGLang's pinned CPU buffers).

The records are kept in pinned arrays of up to ``bank_bytes`` (default 1 GiB), the banks. A bank
a load wants (at least 7/8 of its rows) travels whole by one ``jax.device_put``, a DMA at the
link's full speed that runs beside the host, and the device write takes its rows from it
(``load_pieces`` hands the pieces over in the order the link carries them, so each write is
queued behind its own copy and runs while the next bank travels); other records move by jitted
loops of slices, up to ``slice_bytes`` (default 32 MiB) of records whose slots and rows follow
each other: a dynamic slice of a bank moved to the device (``jax.device_put`` inside the jit)
into part arrays of up to ``part_bytes`` (default 256 MiB; one shape for every load, so nothing
new to compile), which hold the calling thread until they have landed. An offload is a
dynamic-update-slice of device records into the (donated) bank. ``prefetch`` starts a
sequence's copies as soon as it is known to start, before its pages are found: the slice loops
on a worker thread (``kvlab.kvcache.tiers.bank_prefetch``), then the whole-bank DMAs but the
last, which goes behind the writes of the others. On the lent H200 a 32k-token document of the
Llama-3-8B shape (4.29 GB) travelled as four 1 GiB banks at 49 GB/s, in slices at 44 GB/s
(docs/benchmarks.md). Host reads (``read_rows``, for a
demotion to disk) copy out of a transient NumPy view: a view that outlived the copy would keep
the array from being donated.

Examples:
    >>> import jax, numpy as np
    >>> tier = PinnedHostTier(num_pages=4, page_record=jax.ShapeDtypeStruct((2, 3), "float32"))
    >>> tier.records[0].sharding.memory_kind
    'pinned_host'
    >>> _ = tier.put(b"block-a", np.ones((2, 3), np.float32))
    >>> tier.get(b"block-a").sum(), tier.load_records(tier.slots_of([b"block-a"])).shape
    (np.float32(6.0), (1, 2, 3))
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from kvlab.kvcache.eviction import LRU
from kvlab.kvcache.tiers.array_tier import ArrayTier
from kvlab.kvcache.tiers.bank_prefetch import BankPrefetches
from kvlab.kvcache.tiers.records import RecordPiece, pad_distinct, pad_slots
from kvlab.kvcache.tiers.slice_copies import copy_slices, padded, part_chunks, runs

RUN_BYTES = 32 << 20      # records whose slots follow each other move in slices of up to this size
BANK_BYTES = 1 << 30      # records are kept in pinned arrays of up to this size (banks)
PART_BYTES = 256 << 20    # the records a load wants of banks it wants in part go in arrays of this size
WHOLE_BANK_SHARE = 7 / 8  # a load wanting this share of a bank's rows moves the whole bank


class PinnedHostTier(ArrayTier):
    """``num_pages`` records of ``page_record`` in pinned host memory of ``device`` (default: the
    first JAX device), evicted by ``eviction`` (default ``LRU()``) when full; a first tier whose
    loads and offloads run at the host link's speed. Records in consecutive slots move in slices
    of up to ``slice_bytes``; the records are kept in pinned arrays (banks) of up to
    ``bank_bytes``; a load that wants ``whole_bank_share`` of a bank's rows or more moves the bank
    whole (above 1: never), and the rows it wants of the other banks in device arrays of up to
    ``part_bytes`` (one shape: one compilation of the copies and of the device write)."""

    def __init__(self, num_pages: int, page_record=None, eviction=None, *, device=None,
                 slice_bytes: int = RUN_BYTES, bank_bytes: int = BANK_BYTES,
                 whole_bank_share: float = WHOLE_BANK_SHARE, part_bytes: int = PART_BYTES):
        sizes = (("slice_bytes", slice_bytes), ("bank_bytes", bank_bytes), ("part_bytes", part_bytes))
        for name, value in sizes:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PinnedHostTier needs {name} >= 1 (bytes), got {value!r}")
        if isinstance(whole_bank_share, bool) or not isinstance(whole_bank_share, numbers.Real) \
                or not whole_bank_share > 0:
            raise ValueError(f"PinnedHostTier needs whole_bank_share > 0 (the share of a bank's rows a load "
                             f"must want to move the bank whole; above 1: never), got {whole_bank_share!r}")
        self.slice_bytes, self.bank_bytes, self.whole_bank_share = slice_bytes, bank_bytes, whole_bank_share
        self.part_bytes = part_bytes
        self.device = device or jax.devices()[0]
        self._pinned = SingleDeviceSharding(self.device, memory_kind="pinned_host")
        self._on_device = SingleDeviceSharding(self.device)
        self._store = jax.jit(self._copy_into_pinned, static_argnames="run", donate_argnums=0,
                              out_shardings=self._pinned)
        self._load = jax.jit(self._copy_to_device, static_argnames="run", donate_argnums=0,
                             out_shardings=self._on_device)
        self._prefetches = BankPrefetches()
        super().__init__(num_pages, page_record, LRU() if eviction is None else eviction)

    def _new_records(self, shape, dtype):
        record_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self._bank_slots = max(1, min(self.num_pages, self.bank_bytes // record_bytes))
        self._part_rows = max(1, min(self._bank_slots, self.part_bytes // record_bytes))
        num_banks = -(-self.num_pages // self._bank_slots)
        return tuple(jax.device_put(np.zeros((self._bank_slots, *shape), dtype), self._pinned)
                     for _ in range(num_banks))

    @property
    def records(self) -> tuple[jax.Array, ...] | None:
        """The record banks, pinned arrays ``[bank_slots, *shape]``: slot ``s`` is row
        ``s % bank_slots`` of bank ``s // bank_slots`` (XLA:GPU stores into a pinned array of 4 GiB
        or more ten times slower than into one of 2 GiB, and a bank is the unit a load moves
        whole); None until the page record is bound."""
        return self._records

    def _by_bank(self, slots):
        """``(bank, positions in slots, rows in the bank)`` for each bank ``slots`` touch."""
        slots = np.asarray(slots, np.int64)
        bank = slots // self._bank_slots
        for b in np.unique(bank):
            at = np.flatnonzero(bank == b)
            yield int(b), at, slots[at] - b * self._bank_slots

    def read_rows(self, slots) -> np.ndarray:
        out = np.empty((len(slots), *self.shape), self.dtype)
        for b, at, rows in self._by_bank(slots):
            out[at] = np.asarray(self._storage()[b])[rows]          # a transient view, then a copy
        return out

    def write_rows(self, slots, rows) -> None:
        rows = np.asarray(rows)
        self.store_records(slots, jax.device_put(rows, self._on_device), np.arange(len(rows)))

    def _run(self, rows: int) -> int:
        """Records per slice, at most ``rows`` (the other side's rows) and a bank's slots."""
        per_slice = self.slice_bytes // (int(np.prod(self.shape)) * self.dtype.itemsize)
        return max(1, min(per_slice, rows, self._bank_slots))

    def _copy_into_pinned(self, bank, data, *plan, run):
        def move(piece):
            return jax.device_put(piece, self._pinned)
        return copy_slices(bank, data, *plan, run=run, move=move,
                           move_reversed=lambda p: move(jnp.flip(p, 0)))

    def _copy_to_device(self, out, bank, *plan, run):
        def move(piece):
            return jax.device_put(piece, self._on_device)
        return copy_slices(out, bank, *plan, run=run, move=move,
                           move_reversed=lambda p: jnp.flip(move(p), 0))

    def store_records(self, slots, data, rows) -> None:
        banks, rows = list(self._storage()), np.asarray(rows, np.int64)
        run, length = self._run(data.shape[0]), len(pad_slots(slots))
        for b, at, bank_rows in self._by_bank(slots):
            self._prefetches.written(b, bank_rows)  # before the bank is donated
            banks[b] = self._store(banks[b], data, *runs(rows[at], bank_rows, run, length), run=run)
        self._records = tuple(banks)

    def _whole(self, groups) -> list[bool]:
        """For each ``(bank, positions, rows)`` of ``_by_bank``: whether a load moves it whole."""
        return [len(np.unique(rows)) >= self.whole_bank_share * self._bank_slots for _, _, rows in groups]

    def prefetch(self, slots) -> None:
        """Start the copies a ``load_pieces(slots)`` would make (``BankPrefetches``), in the order the
        link should carry them: the slice loops of the banks wanted in part on a worker thread, into
        the load's own part arrays (``part_chunks``), their plans sent ahead of any bank; then the
        DMAs of the banks wanted whole but the last of two or more, which ``load_pieces`` sends
        behind the writes of the others (a write's page list waits behind every copy sent before
        it). Rows and banks a started copy serves are not copied again. The load takes the copies
        of rows not written since and drops the others; until then each takes its size in device
        memory."""
        banks = self._storage()
        groups = list(self._by_bank(slots))
        whole = self._whole(groups)
        in_part = [g for g, w in zip(groups, whole) if not w]
        for chunk in part_chunks([at for _, at, _ in in_part], self._part_rows):
            parts = [(in_part[i][0], in_part[i][2][sel], dst) for i, sel, dst in chunk]
            parts = [(b, rows, dst) for b, rows, dst in parts if not self._prefetches.covers(b, rows)]
            if parts:
                plans = [self._slice_plan(rows, dst) for _, rows, dst in parts]
                self._prefetches.start_rows(parts, functools.partial(
                    self._parts_to_device, [banks[b] for b, _, _ in parts], plans))
        wanted = [b for (b, _, _), w in zip(groups, whole) if w]
        for b in wanted[:-1] if len(wanted) > 1 else wanted:
            self._prefetches.start_whole(b, functools.partial(jax.device_put, banks[b], self._on_device))

    def _slice_plan(self, rows, at) -> tuple:
        """``runs``' plan copying bank ``rows`` to rows ``at`` of a part array, on the device
        (sent now, so it travels ahead of what is sent later)."""
        return jax.device_put(runs(rows, at, self._run(self._part_rows), self._part_rows), self._on_device)

    def _parts_to_device(self, banks, plans) -> jax.Array:
        """A part array ``[part_rows, ...]`` on the device holding, for each bank's array of
        ``banks``, the rows its ``_slice_plan`` of ``plans`` copies: the slice loops
        ``load_pieces`` runs."""
        out = jnp.zeros((self._part_rows, *self.shape), banks[0].dtype, device=self._on_device)
        for bank, plan in zip(banks, plans):
            out = self._load(out, bank, *plan, run=self._run(self._part_rows))
        return out

    def clear(self) -> None:
        super().clear()
        self._prefetches.clear()

    def load_pieces(self, slots) -> Iterator[RecordPiece]:
        """The records of ``slots`` as pieces on the device, in the order the link carries them:
        first the records of the banks wanted in part, in the load's order, ``part_rows`` of them
        in each part array ``[part_rows, ...]`` (``part_chunks``: one shape for every load, so
        nothing new to compile however many rows it wants), moved in slices (or prefetched: sent
        ahead of the banks), which the host waits for; then each bank wanted (almost) whole,
        with the rows wanted of it, moved by one ``jax.device_put`` (a DMA at the link's full
        speed that runs beside the host), or prefetched. A bank not prefetched is sent when the
        caller asks for its piece, after it wrote the pieces before: a write's page list then
        waits on the link only for the banks sent before it, and its write runs while the next
        bank travels. The caller takes the pieces before the tier changes (a generator: the
        copies start at its first step)."""
        dtype = self._storage()[0].dtype          # (ValueError while no page record is bound)
        groups = list(self._by_bank(slots))
        whole = self._whole(groups)
        parts = [g for g, w in zip(groups, whole) if not w]
        chunks = part_chunks([at for _, at, _ in parts], self._part_rows)
        chunk_of = [np.empty(len(rows), np.int64) for _, _, rows in parts]   # each row's array
        for c, chunk in enumerate(chunks):
            for i, sel, _ in chunk:
                chunk_of[i][sel] = c
        part_of = {b: i for i, (b, _, _) in enumerate(parts)}
        taken = {}
        for c, chunk in enumerate(chunks):
            for i, _, _ in chunk:
                if i not in taken:                # a bank's started copies, waited for once
                    taken[i] = self._prefetches.take_rows(parts[i][0], parts[i][2])
            items = [(parts[i], sel, dst, taken[i]) for i, sel, dst in chunk]
            data = self._chunk_on_device(items, dtype, _read_last_by(c, taken, chunk_of, part_of))
            yield RecordPiece(data, np.concatenate([dst for _, _, dst in chunk]),
                              np.concatenate([parts[i][1][sel] for i, sel, _ in chunk]))
        for (b, at, rows), w in zip(groups, whole):
            if w:
                yield RecordPiece(self._bank_on_device(b, rows), rows, at)
        self._prefetches.clear()

    def load_records(self, slots) -> jax.Array:
        """The records of ``slots`` on the device, ``[next_pow2(n), ...]``: ``load_pieces``
        placed into one array."""
        return self._assembled(list(self.load_pieces(slots)), len(pad_slots(slots)), self._storage()[0].dtype)

    def _assembled(self, pieces, length: int, dtype, last=None) -> jax.Array:
        """``[length, ...]`` on the device with each piece's rows at its positions. A piece laid
        out as the whole (its rows at their own positions) is the array the others go into (it
        is donated): no copy of it, and its other rows are those the others (or the caller)
        overwrite. ``last``: the ids of the pieces' arrays nothing reads after this (default:
        all); only those may be the base."""
        base = next((p for p in pieces if p.data.shape[0] == length and (last is None or id(p.data) in last)
                     and (p.positions is None or np.array_equal(p.rows, p.positions))), None)
        out = jnp.zeros((length, *self.shape), dtype, device=self._on_device) if base is None else base.data
        for data, rows, at in (p for p in pieces if p is not base):
            out = _place_rows(out, data, padded(rows, length), pad_distinct(at, length, length))
        return out

    def _chunk_on_device(self, chunk, dtype, last) -> jax.Array:
        """A part array ``[part_rows, ...]`` on the device: for each ``(group, sel, dst, started)``
        of ``chunk``, the rows ``sel`` (indices into its rows) of a ``_by_bank`` group at rows
        ``dst``, from the prefetched copies that serve the group (``take_rows``' ``started``; a
        copy laid out as this array, the usual case, becomes the array itself where no later
        part array reads it: its id in ``last``), or by slice loops when none do."""
        by_copy, missing = {}, []
        for (b, _, rows), sel, dst, started in chunk:
            if started is None:
                missing.append((b, rows[sel], dst))
                continue
            to = np.full(len(rows), -1, np.int64)
            to[sel] = dst                         # a row of the group -> its row here, or -1
            for copy, positions, wanted, _ in started:
                keep = to[wanted] >= 0
                if keep.any():
                    _, src, at = by_copy.setdefault(id(copy), (copy, [], []))
                    src.append(positions[keep])
                    at.append(to[wanted][keep])
        out = self._assembled([RecordPiece(copy, np.concatenate(src), np.concatenate(at))
                               for copy, src, at in by_copy.values()], self._part_rows, dtype, last)
        for b, rows, dst in missing:
            out = self._load(out, self._storage()[b], *self._slice_plan(rows, dst),
                             run=self._run(self._part_rows))
        return out

    def _bank_on_device(self, b: int, rows) -> jax.Array:
        """Bank ``b`` on the device: its prefetched copy if that serves ``rows`` (none written
        since), else a new DMA."""
        copy = self._prefetches.take_whole(b, rows)
        return copy if copy is not None else jax.device_put(self._storage()[b], self._on_device)


def _read_last_by(c: int, taken: dict, chunk_of: list, part_of: dict) -> set:
    """The ids of the started copies that no part array after the ``c``-th reads: for each bank
    they hold rows of that the load wants in part, its copies are taken (``taken``, by part) and
    the rows they serve go into arrays ``<= c`` (``chunk_of``: each part's rows' arrays)."""
    last, holds = {}, {}
    for i, started in taken.items():
        for copy, _, wanted, banks in started or ():
            last[id(copy)] = max(last.get(id(copy), -1), int(chunk_of[i][wanted].max()))
            holds[id(copy)] = banks
    return {k for k, at in last.items()
            if at <= c and all(part_of[b] in taken for b in holds[k] if b in part_of)}


@functools.partial(jax.jit, donate_argnums=0)
def _place_rows(out, bank, src_rows, dst_rows):
    """``out[dst_rows[j]] = bank[src_rows[j]]`` (both ``[length]``; ``dst_rows`` distinct, those
    past ``out``'s rows padding, dropped)."""
    return out.at[dst_rows].set(bank[src_rows], mode="drop", unique_indices=True)
