"""The host-side inputs of one step in a single int32 buffer: one host-to-device transfer a step.

Every integer array a step needs (the batch's tokens, positions, write slots, query offsets, KV
lengths, sampled rows, block-table rows, the number of sequences, and the block-table cells to
update) is a view into one NumPy buffer, so the runner fills the views and the step receives one
array (a dozen separate arrays would be a dozen transfers). Inside the jitted step ``unpack``
slices the buffer back at static offsets (free: XLA fuses the slices into their consumers).

Layout for ``tokens`` T, ``rows`` S and ``changes`` C (all int32)::

    tokens[T] positions[T] slots[T] cu_q_lens[S+1] kv_lens[S] logits_indices[S] cache_rows[S]
    num_seqs[1] (change_rows[C] change_cols[C] change_pages[C])

Each field (and the block of the three change fields, which is read as one ``[3, C]`` array)
starts at a multiple of ``ALIGN`` elements, 256 bytes: XLA may hand a slice of the buffer to a
kernel as it is, and a Mosaic GPU kernel rejects an input that is not 256-byte aligned.

Examples:
    >>> import numpy as np
    >>> layout = InputLayout(tokens=4, rows=2, changes=2)
    >>> views = layout.allocate()
    >>> views.tokens[:2] = [5, 6]; views.num_seqs[0] = 2
    >>> batch, cache_rows, changes = layout.unpack(views.buffer)
    >>> batch.tokens.tolist(), int(batch.num_seqs), batch.slots.tolist(), changes.shape
    ([5, 6, 0, 0], 2, [-1, -1, -1, -1], (3, 2))
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from kvlab.attention.batch import RaggedBatch

ALIGN = 64          # int32 elements: 256 bytes

_FIELDS = ("tokens", "positions", "slots", "cu_q_lens", "kv_lens", "logits_indices", "cache_rows",
           "num_seqs", "change_rows", "change_cols", "change_pages")


@dataclasses.dataclass(frozen=True)
class InputViews:
    """Writable views into ``buffer`` [N] int32, one per field of the layout."""

    buffer: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray
    slots: np.ndarray
    cu_q_lens: np.ndarray
    kv_lens: np.ndarray
    logits_indices: np.ndarray
    cache_rows: np.ndarray
    num_seqs: np.ndarray
    change_rows: np.ndarray
    change_cols: np.ndarray
    change_pages: np.ndarray


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """Where each field sits in the buffer of a step with ``tokens`` query rows, ``rows``
    sequence rows and room for ``changes`` block-table cells."""

    tokens: int
    rows: int
    changes: int

    @functools.cached_property
    def _bounds(self) -> list[tuple[int, int]]:
        t, s, c = self.tokens, self.rows, self.changes
        bounds, start = [], 0
        for size in (t, t, t, s + 1, s, s, s, 1):
            bounds.append((start, start + size))
            start = _aligned(start + size)
        return bounds + [(start + i * c, start + (i + 1) * c) for i in range(3)]

    @property
    def size(self) -> int:
        return self._bounds[-1][1]

    def allocate(self) -> InputViews:
        """A zeroed buffer and its views (padding slots -1: nothing is written for them)."""
        buffer = np.zeros(self.size, np.int32)
        views = {name: buffer[a:b] for name, (a, b) in zip(_FIELDS, self._bounds)}
        views["slots"][:] = -1
        return InputViews(buffer=buffer, **views)

    def unpack(self, buffer) -> tuple[RaggedBatch, object, object]:
        """Inside the step: (the batch, its ``page_table`` None; ``cache_rows`` [S]; the block-
        table changes [3, C] as rows, cols, pages) from the buffer (NumPy or jax arrays alike)."""
        f = {name: buffer[a:b] for name, (a, b) in zip(_FIELDS, self._bounds)}
        batch = RaggedBatch(tokens=f["tokens"], positions=f["positions"], slots=f["slots"],
                            cu_q_lens=f["cu_q_lens"], kv_lens=f["kv_lens"], page_table=None,
                            num_seqs=f["num_seqs"][0], logits_indices=f["logits_indices"])
        start, end = self._bounds[-3][0], self.size
        changes = buffer[start:end].reshape(3, self.changes)
        return batch, f["cache_rows"], changes


def _aligned(n: int) -> int:
    """``n`` rounded up to a multiple of ``ALIGN``."""
    return -(-n // ALIGN) * ALIGN
