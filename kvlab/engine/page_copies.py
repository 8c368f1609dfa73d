"""Whole-page operations the executor makes between steps, each one jitted call over the storage
(donated where it changes): swap copies to and from the host tier, and the sealing of full staging
pages (``kvlab.kvcache.staging``). Page counts are padded to powers of two (few compilations);
padding entries are out-of-range ids, which the storages drop.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from kvlab.schedulers.shapes import next_pow2


@jax.jit
def _read_pages(storage, pages):
    return storage.read_pages(pages)


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_pages(storage, pages, data):
    return storage.write_pages(pages, data)


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
    return np.asarray(_read_pages(storage, padded(pages, 0)))[:len(pages)]


def write_pages(storage, pages, data: np.ndarray):
    """Host records ``data [n, ...]`` into ``pages`` of the (donated) storage."""
    pages = padded(pages, storage.num_pages)                  # padding rows are dropped
    full = np.zeros((len(pages),) + data.shape[1:], data.dtype)
    full[:len(data)] = data
    return _write_pages(storage, pages, full)


def seal_pages(storage, pairs: list[tuple[int, int]]):
    """Seal full staging pages: ``pairs`` of (staging page, sealed page) ids; returns the
    (donated) storage with the sealed pages written."""
    src, dst = zip(*pairs)
    return _seal_pages(storage, padded(src, 0), padded(dst, storage.num_pages))
