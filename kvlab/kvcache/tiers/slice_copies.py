"""Copies of records in slices between a tier's arrays and the device (``PinnedHostTier``): a
plan (``runs``) cuts the copies ``dst[j] <- src[j]`` into slices whose rows follow each other
and pads it to one shape for every cut; ``copy_slices``, traced inside a jitted copy, makes them
with a ``move`` of each slice to the other side (``jax.device_put`` to the other memory);
``part_chunks`` says which part array, and which row of it, each record a load wants of a bank
it wants in part goes to.

Examples:
    >>> src_starts, dst_starts, n, *_ = runs([4, 5, 6, 9], [0, 1, 2, 3], run=3, length=4)
    >>> src_starts.tolist(), dst_starts.tolist(), n
    ([4, 0, 0, 0], [0, 0, 0, 0], 1)
"""

from __future__ import annotations

import jax
import numpy as np


def runs(src, dst, run: int, length: int):
    """Cut the copies ``dst[j] <- src[j]`` into slices of ``run`` records whose sources and
    destinations each step by one: in the same direction (a plain slice) or in opposite ones (a
    reversed slice: a prefix cache evicts a document's last pages first). Returns three groups,
    each ``(src starts, dst starts, count)`` with int32 starts (the lowest index of each slice)
    padded to ``length`` (>= ``len(src)``; one shape for every cut; padding is never copied):
    plain slices, reversed slices, and the copies left, one record each."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    n = len(src)
    step_src, step_dst = np.diff(src), np.diff(dst)
    # +1: both step the same way, -1: opposite ways, 0: no slice continues across this pair
    kind = np.where((np.abs(step_src) == 1) & (np.abs(step_dst) == 1), step_src * step_dst, 0)
    groups = {1: [], -1: []}
    in_slice = np.zeros(n, bool)
    begin = 0
    for end in range(1, n + 1):                     # stretches of one kind, cut into slices
        if end < n and kind[end - 1] != 0 and (end == begin + 1 or kind[end - 1] == kind[end - 2]):
            continue
        direction = kind[begin] if end - begin > 1 else 1
        for start in range(begin, end - run + 1, run):
            groups[direction].append((src[start:start + run].min(), dst[start:start + run].min()))
            in_slice[start:start + run] = True
        begin = end
    single = np.flatnonzero(~in_slice)

    def group(pairs):
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        return padded(pairs[:, 0], length), padded(pairs[:, 1], length), len(pairs)
    return (*group(groups[1]), *group(groups[-1]), padded(src[single], length),
            padded(dst[single], length), len(single))


def _copy_loop(into, data, src, dst, n, size: int, move):
    """``into[dst[j]:+size] = move(data[src[j]:+size])`` for ``j < n``."""
    def body(j, acc):
        piece = move(jax.lax.dynamic_slice_in_dim(data, src[j], size, 0))
        return jax.lax.dynamic_update_slice_in_dim(acc, piece, dst[j], 0)
    return jax.lax.fori_loop(0, n, body, into)


def copy_slices(into, data, *plan, run: int, move, move_reversed):
    """The slices and single records of ``runs``' plan, from ``data`` into ``into``;
    ``move_reversed`` moves a slice and reverses it on the device (never in host memory)."""
    into = _copy_loop(into, data, *plan[0:3], run, move)
    into = _copy_loop(into, data, *plan[3:6], run, move_reversed)
    return _copy_loop(into, data, *plan[6:9], 1, move)


def padded(values, length: int) -> np.ndarray:
    """``values`` as int32, padded with zeros to ``length``."""
    out = np.zeros(length, np.int32)
    out[:len(values)] = values
    return out


def part_chunks(positions, rows_per_chunk: int) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """Where the records of the banks a load wants in part go: given each bank's positions in
    the load (``positions``, a list of int arrays, k positions in all), the records in the load's
    order cut into part arrays of ``rows_per_chunk`` rows (the last padded), and for each array
    ``[(bank index, sel, rows)]``: the bank's positions ``sel`` (indices into its positions) go to
    ``rows`` of that array.

    Examples:
        >>> chunks = part_chunks([np.array([7, 2]), np.array([5])], rows_per_chunk=2)
        >>> [[(i, sel.tolist(), rows.tolist()) for i, sel, rows in c] for c in chunks]
        [[(0, [1], [0]), (1, [0], [1])], [(0, [0], [0])]]
    """
    if not positions:
        return []
    every = np.concatenate(positions)
    rank = np.empty(len(every), np.int64)
    rank[np.argsort(every, kind="stable")] = np.arange(len(every))
    chunks = [[] for _ in range(-(-len(every) // rows_per_chunk))]
    for i, ranks in enumerate(np.split(rank, np.cumsum([len(p) for p in positions])[:-1])):
        for c in np.unique(ranks // rows_per_chunk):
            sel = np.flatnonzero(ranks // rows_per_chunk == c)
            chunks[c].append((i, sel, ranks[sel] - c * rows_per_chunk))
    return chunks
