"""The KV format contract: how K and V are stored in a cache's pages.

A format turns one layer's new K or V rows ``[T, Hkv, D]`` into what the pages hold - ``data``
``[T, Hkv, packed_dim]`` of ``data_dtype`` and per-token metadata ``meta [T, Hkv, meta_width]``
(float16: a scale and a zero point for the integer formats, nothing for the others) - given the
layer's per-head scales ``layer_scale [Hkv]`` (float32: fp8's scales; ones for the others), and
back. The storage keeps one ``layer_scales [L, 2, Hkv]`` array (K at index 0, V at 1) beside the
pages, so a format with static or calibrated scales needs no other state.

The arithmetic lives in tile functions written with elementwise operations and last-axis
reductions only, so the same code runs in the jnp reference (``encode``/``decode`` call them) and
inside the Pallas kernels: ``encode_tile`` (rows to bytes and metadata), and, for reading, the
split of a stored value into an exact *code* and a per-row affine map, ``x = code * scale +
zero``: ``tile_codes`` turns the bytes into codes (small integers or fp8 values, exact in the
``code_dtype``) and ``tile_affine`` gives each row's (scale, zero). The reference applies the map
(``decode_tile``); a kernel applies it in the code dtype or folds a per-layer scale into its
matrix products (``q . k = scale * (q . code)``), so a tile costs an unpack and no per-element
conversion instruction. The head
dimension travels as ``tile_parts`` contiguous parts (int4 packs element ``j`` and ``j + D/2``
into one byte, so a byte tile unpacks into two halves without an interleave), and the per-token
metadata as a tuple of ``meta_width`` vectors.

Formats are frozen, hashable strategy objects (static arguments of the jitted step). The plain
format (``Plain``) keeps the model's dtype and is the default: caches built without a format keep
their original storage classes, unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.kvcache.staging import InPlaceWrites

META_DTYPE = jnp.float16          # per-token scales and zero points (LMDeploy stores half2)


class ByteFields(Protocol):
    """How the fields of packed bytes become float16 ``1024 + field`` (a kernel may bring a faster
    way that computes the same values)."""

    def biased_float16(self, data: jax.Array, bits: int) -> tuple[jax.Array, ...]:
        """data uint8 ``[..., w]`` -> ``8 // bits`` float16 arrays ``[..., w]``: ``1024 + field
        i``, field ``i`` in bits ``i * bits`` of each byte."""
        ...


@runtime_checkable
class KVFormat(Protocol):
    """How K/V rows are encoded in the pages. Shapes: ``x [..., Hkv, D]``; ``data [..., Hkv,
    packed_dim(D)]``; ``meta [..., Hkv, meta_width]``; ``layer_scale [Hkv]`` float32."""

    name: str
    meta_width: int
    tile_parts: int                  # the head dimension in this many contiguous parts (see above)

    def check(self, *, num_kv_heads: int, head_dim: int) -> None:
        """Raise ValueError naming what is allowed if the format cannot store these shapes."""
        ...

    def data_dtype(self, model_dtype) -> jnp.dtype:
        """Element type of the stored data."""
        ...

    def packed_dim(self, head_dim: int) -> int:
        """Stored elements per token and head."""
        ...

    def initial_layer_scales(self, *, num_layers: int, num_kv_heads: int) -> np.ndarray:
        """``[L, 2, Hkv]`` float32: the scales the storage starts with."""
        ...

    def calibrate(self, layer_scale: jax.Array, x: jax.Array, valid: jax.Array, which: int) -> jax.Array:
        """The layer's scales ``[Hkv]`` for K (``which=0``) or V (1) before ``x [T, Hkv, D]`` (rows
        with ``valid [T]`` False are padding) is written; formats without calibration return them."""
        ...

    def encode(self, x: jax.Array, layer_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x [T, Hkv, D]`` -> ``(data [T, Hkv, packed_dim], meta [T, Hkv, meta_width])``."""
        ...

    def decode(self, data: jax.Array, meta: jax.Array, layer_scale: jax.Array, dtype) -> jax.Array:
        """Inverse of ``encode``: ``[..., Hkv, D]`` in ``dtype``; ``layer_scale`` broadcasts as ``[Hkv]``."""
        ...

    def encode_tile(self, parts: tuple[jax.Array, ...],
                    layer_scale) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Rows in ``tile_parts`` parts, each ``[..., D / tile_parts]`` (float) -> ``(data [...,
        packed_dim], meta)``, meta a tuple of ``meta_width`` float16 vectors ``[...]``;
        ``layer_scale`` broadcasts against ``[..., 1]`` (a scalar in a kernel)."""
        ...

    def code_dtype(self, model_dtype) -> jnp.dtype:
        """The float type that holds every code exactly, in which a kernel multiplies codes."""
        ...

    def tile_codes(self, data: jax.Array, dtype, *,
                   fields: ByteFields | None = None) -> tuple[jax.Array, ...]:
        """``data [..., packed_dim]`` as stored -> ``tile_parts`` parts ``[..., D / tile_parts]``
        of codes in ``dtype`` (exact); ``fields``: a kernel's own way to unpack bit fields
        (formats without packed fields ignore it)."""
        ...

    def tile_affine(self, meta: tuple[jax.Array, ...], layer_scale):
        """Each row's ``(scale, zero)`` (float32, broadcasting against the rows' leading shape
        ``[...]``, or None for 1 and 0): ``x = code * scale + zero``."""
        ...

    def token_bytes(self, *, head_dim: int, model_dtype) -> float:
        """Bytes of one token's K and V of one KV head and layer, metadata included."""
        ...

    def dense_view(self, k: jax.Array, v: jax.Array, layer_scale: jax.Array):
        """One sequence's rows ``k, v [N, Hkv, D]`` as a dense reference reads them from a cache
        in this format: ``(k_stored, v_stored, stored_from [N] int32)``, query ``i`` reading key
        ``j`` as stored iff ``i >= stored_from[j]`` (else as given); ``layer_scale [2, Hkv]``."""
        ...

    def tile_biased_codes(self, data: jax.Array, dtype, *,
                          fields: ByteFields | None = None) -> tuple[tuple[jax.Array, ...], float]:
        """``(parts, bias)``: the codes plus a constant ``bias`` as they come out of the bytes
        (``tile_codes`` subtracts it), for kernels that fold the bias into their products;
        ``fields`` as in ``tile_codes``."""
        ...

    def page_writes(self, *, num_pages: int, page_size: int):
        """The host half of writing pages (``kvlab.kvcache.staging``): ``InPlaceWrites`` for a
        per-token format."""
        ...

    def tile_tokens(self, block_k: int, page_size: int) -> int:
        """Tokens a kernel's KV tile holds: ``block_k`` (any page size)."""
        ...


def decode_tile(fmt: KVFormat, data: jax.Array, meta: tuple[jax.Array, ...], layer_scale,
                dtype) -> tuple[jax.Array, ...]:
    """Inverse of ``encode_tile``: ``tile_parts`` parts ``[..., D / tile_parts]`` in ``dtype``
    (codes times scale plus zero, in float32, rounded once)."""
    scale, zero = fmt.tile_affine(meta, layer_scale)
    out = []
    for code in fmt.tile_codes(data, jnp.float32):
        x = code if scale is None else code * scale[..., None]
        x = x if zero is None else x + zero[..., None]
        out.append(x.astype(dtype))
    return tuple(out)


def encode_rows_by_tiles(fmt: KVFormat, x: jax.Array, layer_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``KVFormat.encode`` through the format's ``encode_tile``: x ``[T, Hkv, D]``, layer_scale
    ``[Hkv]`` -> (data ``[T, Hkv, packed_dim]``, meta ``[T, Hkv, meta_width]`` float16)."""
    data, meta = fmt.encode_tile(tuple(jnp.split(x, fmt.tile_parts, axis=-1)), layer_scale[:, None])
    return data, stack_meta(meta, x.shape[:-1])


def decode_rows_by_tiles(fmt: KVFormat, data: jax.Array, meta: jax.Array, layer_scale: jax.Array,
                         dtype) -> jax.Array:
    """``KVFormat.decode`` through ``decode_tile``: ``[..., Hkv, D]`` in ``dtype``."""
    cols = tuple(meta[..., i] for i in range(meta.shape[-1]))
    parts = decode_tile(fmt, data, cols, jnp.asarray(layer_scale, jnp.float32), dtype)
    return jnp.concatenate(parts, axis=-1)


def stack_meta(meta: tuple[jax.Array, ...], lead: tuple[int, ...]) -> jax.Array:
    """A tile's metadata vectors stacked on a last axis: ``[*lead, len(meta)]`` float16."""
    if not meta:
        return jnp.zeros((*lead, 0), META_DTYPE)
    return jnp.stack(meta, axis=-1).astype(META_DTYPE)


def bytes_per_token(fmt, *, num_layers: int, num_kv_heads: int, head_dim: int, model_dtype) -> int:
    """True bytes one token's K and V take in the pages, over all layers (data and metadata;
    ``fmt.token_bytes`` per layer and KV head), rounded up."""
    return math.ceil(num_layers * num_kv_heads * fmt.token_bytes(head_dim=head_dim, model_dtype=model_dtype))


class RowFormat:
    """What every per-token format (each K/V row encoded on its own, when written) shares: pages
    written in place, bytes counted per row, and a dense view that reads every row as stored."""

    def page_writes(self, *, num_pages: int, page_size: int) -> InPlaceWrites:
        return InPlaceWrites()

    @property
    def write_format(self):
        """The format a KV write kernel encodes new rows in: this one (rows are stored as written)."""
        return self

    def tile_tokens(self, block_k: int, page_size: int) -> int:
        """Tokens a kernel's KV tile holds: ``block_k`` whatever the page (each row stands alone)."""
        return block_k

    def token_bytes(self, *, head_dim: int, model_dtype) -> int:
        """The packed data plus ``meta_width`` float16 values, each for K and for V."""
        data = self.packed_dim(head_dim) * jnp.dtype(self.data_dtype(model_dtype)).itemsize
        return 2 * (data + self.meta_width * jnp.dtype(META_DTYPE).itemsize)

    def tile_biased_codes(self, data, dtype, *, fields=None):
        """The codes themselves, no bias (formats whose codes need no offset)."""
        return self.tile_codes(data, dtype, fields=fields), 0.0

    def dense_view(self, k, v, layer_scale):
        """Every row encoded and decoded, read so by every query."""
        def stored(x, scale):
            return self.decode(*self.encode(x, scale), scale, x.dtype)
        return stored(k, layer_scale[0]), stored(v, layer_scale[1]), jnp.zeros(k.shape[0], jnp.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plain(RowFormat):
    """The model's own dtype (bf16, f16 or f32): no encoding. The default.

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.formats import Plain, bytes_per_token
        >>> bytes_per_token(Plain(), num_layers=2, num_kv_heads=2, head_dim=16, model_dtype=jnp.bfloat16)
        256
    """

    name: str = "plain"
    meta_width: int = 0
    tile_parts: int = 1

    def check(self, *, num_kv_heads: int, head_dim: int) -> None:
        """Any shape."""

    def data_dtype(self, model_dtype) -> jnp.dtype:
        return jnp.dtype(model_dtype)

    def packed_dim(self, head_dim: int) -> int:
        return head_dim

    def initial_layer_scales(self, *, num_layers: int, num_kv_heads: int) -> np.ndarray:
        return np.ones((num_layers, 2, num_kv_heads), np.float32)

    def calibrate(self, layer_scale, x, valid, which):
        return layer_scale

    def encode(self, x, layer_scale):
        return x, jnp.zeros((*x.shape[:-1], 0), META_DTYPE)

    def decode(self, data, meta, layer_scale, dtype):
        return data.astype(dtype)

    def encode_tile(self, parts, layer_scale):
        return parts[0], ()

    def code_dtype(self, model_dtype) -> jnp.dtype:
        return jnp.dtype(model_dtype)

    def tile_codes(self, data, dtype, *, fields=None):
        return (data.astype(dtype),)

    def tile_affine(self, meta, layer_scale):
        return None, None

    def dense_view(self, k, v, layer_scale):
        return k, v, jnp.zeros(k.shape[0], jnp.int32)


PLAIN = Plain()


def exact_code_dtype(model_dtype) -> jnp.dtype:
    """float32 for a float32 model, else float16 (exact for codes up to 2048 and for every fp8
    value; a kernel's matrix products take it)."""
    return jnp.dtype(jnp.float32 if jnp.dtype(model_dtype) == jnp.float32 else jnp.float16)
