"""Whole pages as host-tier records: the bytes of one page of each of a storage's arrays (each
``[L, N, ...]``, pages on axis 1), one after the other per layer, as uint8 ``[L, bytes per
layer]``; what a swap space or a tier below the GPU keeps (``KVStorage.read_pages``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def as_bytes(x: jax.Array, lead: int) -> jax.Array:
    """x viewed as bytes, flattened after its first ``lead`` axes: [*x.shape[:lead], nbytes]."""
    return jax.lax.bitcast_convert_type(x, jnp.uint8).reshape(*x.shape[:lead], -1)


def from_bytes(b: jax.Array, like_shape: tuple[int, ...], dtype) -> jax.Array:
    """Inverse of ``as_bytes``: uint8 ``[..., nbytes]`` -> ``like_shape`` of ``dtype``."""
    itemsize = jnp.dtype(dtype).itemsize
    b = b.reshape(*like_shape, itemsize) if itemsize > 1 else b.reshape(like_shape)
    return jax.lax.bitcast_convert_type(b, dtype)


def page_record_of(arrays) -> jax.ShapeDtypeStruct:
    """The host-tier record of one page of ``arrays`` (each ``[L, N, ...]``, pages on axis 1):
    uint8 ``[L, bytes per layer]``, the arrays' bytes one after the other."""
    per_layer = sum(a.dtype.itemsize * math.prod(a.shape[2:]) for a in arrays)
    return jax.ShapeDtypeStruct((arrays[0].shape[0], per_layer), jnp.uint8)


def pages_as_records(arrays, pages: jax.Array) -> jax.Array:
    """Whole ``pages`` of ``arrays`` (``[L, N, ...]`` each) as records ``[n, L, bytes per layer]``."""
    return jnp.concatenate([as_bytes(jnp.swapaxes(a[:, pages], 0, 1), 2) for a in arrays], axis=-1)


def records_into_pages(arrays, pages: jax.Array, data: jax.Array) -> list[jax.Array]:
    """Inverse of ``pages_as_records``: ``arrays`` with ``pages`` (distinct) set from the records
    ``data``; out-of-range page ids are dropped (padding)."""
    out, start = [], 0
    for arr in arrays:
        shape = (data.shape[0], arr.shape[0], *arr.shape[2:])          # [n, L, ...]
        size = jnp.dtype(arr.dtype).itemsize * math.prod(shape[2:])
        piece = from_bytes(data[..., start:start + size], shape, arr.dtype)
        out.append(arr.at[:, pages].set(jnp.swapaxes(piece, 0, 1), mode="drop", unique_indices=True))
        start += size
    return out
