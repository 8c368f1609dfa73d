"""Whole-page operations the executor makes between steps, each one jitted call over the storage
(donated where it changes): swap copies to and from the host tier, and the sealing of full staging
pages (``kvlab.kvcache.staging``). Page counts are padded to powers of two (few compilations);
padding entries are out-of-range ids, which the storages drop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.kvcache.tiers.records import pad_distinct
from kvlab.schedulers.shapes import next_pow2

PARTS = 4                        # host-to-device copies in flight at once, for a large write
PARALLEL_BYTES = 32 << 20        # from this size on
FEW_ROWS = 32                    # a write of up to this many rows of an array: those rows alone


@jax.jit
def _read_pages(storage, pages):
    return storage.read_pages(pages)


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_pages(storage, pages, *parts):
    return storage.write_pages(pages, parts[0] if len(parts) == 1 else jnp.concatenate(parts))


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_few_rows(storage, pages, data, rows):
    """``pages[i]`` <- ``data[rows[i]]`` (both ``[FEW_ROWS]``; padding pages out of range,
    dropped): a gather of those rows alone, then their scatter."""
    return storage.write_pages(pages, data[rows])


@functools.partial(jax.jit, donate_argnums=(0,))
def _seal_pages(storage, src, dst):
    return storage.seal_pages(src, dst)


def padded(pages, fill: int) -> np.ndarray:
    """``pages`` as int32, padded with ``fill`` to the next power of two."""
    out = np.full(next_pow2(len(pages)), fill, np.int32)
    out[:len(pages)] = pages
    return out


def read_pages(storage, pages) -> np.ndarray:
    """Whole pages as host records ``[n, *storage.page_record.shape]`` (one device-to-host copy)."""
    return np.asarray(gather_pages(storage, pages))[:len(pages)]


def gather_pages(storage, pages) -> jax.Array:
    """Whole pages as records on the device ``[next_pow2(n), *storage.page_record.shape]`` (the
    rows past ``n`` padding)."""
    return _read_pages(storage, padded(pages, 0))


def write_pages(storage, pages, data: np.ndarray, pool=None, rows=None):
    """Host records ``data [>= n, ...]`` into ``pages [n]`` of the (donated) storage (rows of
    ``data`` past ``n`` are ignored: a buffer already padded to ``next_pow2(n)`` rows is not
    copied); with ``rows [n]`` (distinct), row ``rows[i]`` of ``data`` (a device array ``[m,
    ...]``, such as a host tier's bank moved whole) into ``pages[i]``, compiled once per shape
    of ``data``: up to ``FEW_ROWS`` rows are gathered, then scattered; more go by one scatter
    of all of ``data`` (which reads every row, wanted or not) in which the rows not wanted go
    to out-of-range ids and are dropped, so no gathered copy of a bank is made. With
    ``pool`` (a ``concurrent.futures`` executor), a large copy travels to the device in
    ``PARTS`` parts at once: one host-to-device copy from pageable memory does not fill the
    link. ``pages`` must be distinct (the storage's scatter assumes unique indices)."""
    if len(set(pages)) != len(pages):
        raise ValueError(f"write_pages needs distinct pages (one record per page), got {len(pages)} "
                         f"ids of which {len(set(pages))} distinct")
    if rows is not None:
        return _write_rows(storage, pages, data, rows)
    pages = pad_distinct(pages, next_pow2(len(pages)), storage.num_pages)    # padding: dropped
    if data.shape[0] != len(pages):
        full = np.zeros((len(pages),) + data.shape[1:], data.dtype)
        n = min(len(data), len(pages))
        full[:n] = data[:n]
        data = full
    if pool is None or not isinstance(data, np.ndarray) or data.nbytes < PARALLEL_BYTES or len(data) % PARTS:
        return _write_pages(storage, pages, data)
    device = next(iter(jax.tree.leaves(storage)[0].devices()))
    rows = len(data) // PARTS
    parts = list(pool.map(lambda i: jax.device_put(data[i * rows:(i + 1) * rows], device), range(PARTS)))
    return _write_pages(storage, pages, *parts)


def _write_rows(storage, pages, data, rows):
    """``write_pages`` with ``rows``: ids ``[m]`` (``m`` rows of ``data``), ``pages[i]`` at
    ``rows[i]`` and distinct out-of-range ids elsewhere."""
    rows, m = np.asarray(rows, np.int64), data.shape[0]
    if len(rows) != len(pages):
        raise ValueError(f"write_pages needs one row of data per page, got {len(rows)} rows "
                         f"for {len(pages)} pages")
    if len(rows) and (rows.min() < 0 or rows.max() >= m or len(np.unique(rows)) != len(rows)):
        raise ValueError(f"write_pages needs distinct rows in [0, {m}) (the rows of data), got "
                         f"{rows.tolist()[:8]}{'...' if len(rows) > 8 else ''}")
    if len(rows) <= FEW_ROWS:             # only the rows wanted, gathered first
        src = np.zeros(FEW_ROWS, np.int32)
        src[:len(rows)] = rows
        return _write_few_rows(storage, pad_distinct(pages, FEW_ROWS, storage.num_pages), data, src)
    ids = np.arange(storage.num_pages, storage.num_pages + m, dtype=np.int32)     # dropped
    ids[rows] = np.asarray(pages, np.int64)
    return _write_pages(storage, ids, data)


def seal_pages(storage, pairs: list[tuple[int, int]]):
    """Seal full staging pages: ``pairs`` of (staging page, sealed page) ids; returns the
    (donated) storage with the sealed pages written."""
    src, dst = zip(*pairs)
    return _seal_pages(storage, padded(src, 0), padded(dst, storage.num_pages))
