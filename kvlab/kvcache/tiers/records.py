"""What a tier's records are: the checks on a tier's size and on the page record it stores (a
``jax.ShapeDtypeStruct``-like spec), and the padding of a copy's slot list to a stable shape."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np


class RecordPiece(NamedTuple):
    """Part of a load's records, as a tier hands them to the device write (``KVTier.load_pieces``):
    row ``rows[i]`` of ``data`` (host records or a device array ``[m, ...]``) is the record of
    the load's ``positions[i]``-th slot. Both None: ``data``'s first rows are the load's records
    in order (rows past them padding)."""

    data: object
    rows: np.ndarray | None = None
    positions: np.ndarray | None = None


def check_num_pages(num_pages, owner: str) -> int:
    """``num_pages`` as an int, ValueError unless it is a whole number >= 1."""
    if isinstance(num_pages, bool) or not isinstance(num_pages, numbers.Integral) or num_pages < 1:
        raise ValueError(f"{owner} needs num_pages >= 1 (a whole number of page records), got {num_pages!r}")
    return int(num_pages)


def record_spec(page_record, owner: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a page record spec, ValueError unless it has positive dimensions and
    a plain (non-object) dtype."""
    shape, dtype = getattr(page_record, "shape", None), getattr(page_record, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{owner} needs page_record with .shape and .dtype (a jax.ShapeDtypeStruct), "
                         f"got {page_record!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"{owner}: page_record dtype {dtype!r} is not a NumPy dtype ({err})") from None
    shape = tuple(shape)
    if not shape or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape):
        raise ValueError(f"{owner}: page_record shape must be one or more positive dimensions, got {shape}")
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"{owner} stores records as bytes: page_record dtype must be a fixed-size "
                         f"numeric type such as float16, bfloat16 or uint8, got {dtype}")
    return tuple(int(n) for n in shape), dtype


def pad_slots(slots) -> np.ndarray:
    """``slots`` as int32, padded with copies of the first to the next power of two (stable
    shapes for the device write; the padding rows go to pages the write drops)."""
    n = max(1, len(slots))
    out = np.full(1 << (n - 1).bit_length(), slots[0] if len(slots) else 0, np.int32)
    out[:len(slots)] = slots
    return out


def pad_distinct(ids, length: int, start: int) -> np.ndarray:
    """Distinct ``ids`` as int32, padded to ``length`` with the distinct ids ``start``,
    ``start + 1``, ... (out of range where ``start`` is the size of what they index: a scatter
    drops them, and may assume unique indices)."""
    out = np.arange(start, start + length, dtype=np.int32)
    out[:len(ids)] = ids
    return out
