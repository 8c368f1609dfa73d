"""A KV tier in pinned (page-locked) host memory, held as a JAX array of memory kind
``pinned_host``: the device copies records in and out by DMA, with no host gather and no staging
copy (TensorRT-LLM's pinned host pool, vLLM's and SGLang's pinned CPU buffers).

Moves are jitted loops of slices: a load is a dynamic slice of the pinned array per record,
moved to the device (``jax.device_put`` inside the jit) into one device array; an offload is a
dynamic-update-slice of each device record into the (donated) pinned array. On the lent H200 a
GiB of 512 KiB records at random slots went to the device in 39.6 ms (27 GB/s) and back in
32.8 ms (33 GB/s), against 0.5 s for the same gather in NumPy. Host reads (``read_rows``, for a
demotion to disk) copy out of a transient NumPy view: a view that outlived the copy would keep
the array from being donated.

Examples:
    >>> import jax, numpy as np
    >>> tier = PinnedHostTier(num_pages=4, page_record=jax.ShapeDtypeStruct((2, 3), "float32"))
    >>> tier.records.sharding.memory_kind
    'pinned_host'
    >>> _ = tier.put(b"block-a", np.ones((2, 3), np.float32))
    >>> tier.get(b"block-a").sum(), tier.load_records([tier.slot_of(b"block-a")]).shape
    (np.float32(6.0), (1, 2, 3))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from kvlab.kvcache.eviction import LRU
from kvlab.kvcache.tiers.array_tier import ArrayTier, pad_slots


def _store_loop(records, data, rows, slots, n, *, pinned):
    """``records[slots[j]] = data[rows[j]]`` for ``j < n`` (``rows``/``slots`` padded)."""
    def body(j, recs):
        page = jax.lax.dynamic_slice_in_dim(data, rows[j], 1, 0)
        return jax.lax.dynamic_update_slice_in_dim(recs, jax.device_put(page, pinned), slots[j], 0)
    return jax.lax.fori_loop(0, n, body, records)


def _load_loop(records, slots, *, device):
    """``records[slots]`` on the device, one slice per record."""
    out = jnp.zeros((len(slots), *records.shape[1:]), records.dtype, device=device)

    def body(j, acc):
        page = jax.device_put(jax.lax.dynamic_slice_in_dim(records, slots[j], 1, 0), device)
        return jax.lax.dynamic_update_slice_in_dim(acc, page, j, 0)
    return jax.lax.fori_loop(0, len(slots), body, out)


class PinnedHostTier(ArrayTier):
    """``num_pages`` records of ``page_record`` in pinned host memory of ``device`` (default: the
    first JAX device), evicted by ``eviction`` (default ``LRU()``) when full; a first tier whose
    loads and offloads run at the host link's speed."""

    def __init__(self, num_pages: int, page_record=None, eviction=None, *, device=None):
        self.device = device or jax.devices()[0]
        self._pinned = SingleDeviceSharding(self.device, memory_kind="pinned_host")
        self._on_device = SingleDeviceSharding(self.device)
        self._store = jax.jit(functools.partial(_store_loop, pinned=self._pinned), donate_argnums=0,
                              out_shardings=self._pinned)
        self._load = jax.jit(functools.partial(_load_loop, device=self._on_device),
                             out_shardings=self._on_device)
        super().__init__(num_pages, page_record, LRU() if eviction is None else eviction)

    def _new_records(self, shape, dtype):
        return jax.device_put(np.zeros((self.num_pages, *shape), dtype), self._pinned)

    def read_rows(self, slots) -> np.ndarray:
        return np.array(np.asarray(self._storage())[np.asarray(slots, np.int64)])

    def write_rows(self, slots, rows) -> None:
        rows = np.asarray(rows)
        self.store_records(slots, jax.device_put(rows, self._on_device), np.arange(len(rows)))

    def store_records(self, slots, data, rows) -> None:
        padded_rows, padded_slots = pad_slots(rows), pad_slots(slots)
        self._records = self._store(self._storage(), data, padded_rows, padded_slots, len(slots))

    def load_records(self, slots) -> jax.Array:
        return self._load(self._storage(), pad_slots(slots))
