"""The tile-level building blocks of the Triton-lowered programs: what a program knows at trace
time (``Static``), indexing a tile of rows through the lowering's ref indexers (a slice of the
columns under Triton, broadcast int arrays in interpret mode), queries and outputs in the KV
format's parts, a KV tile loaded and dequantized, and the float32 arithmetic of the tile loop.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.triton_fields import PtxFields
from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, ByteFields, KVFormat
from kvlab.kvcache.formats.integer import JNP_FIELDS
from kvlab.kvcache.formats.meta_words import unpack_meta_word

LOG2E = 1.4426950408889634
NEG = -1e30          # finite "minus infinity": keeps exp2(m_old - m_new) free of inf - inf


@dataclasses.dataclass(frozen=True, kw_only=True)
class Static:
    """What a program knows at trace time."""

    layout: object
    n_kv: int               # number of cache arrays the layout passes
    group: int              # query heads per KV head
    block_k: int
    page_size: int
    options: AttentionOptions
    interpret: bool
    kv_format: KVFormat = PLAIN

    @property
    def fields(self):
        """How packed integer fields become float16 codes: a few PTX instructions per four
        bytes on the GPU, the jnp specification in interpret mode."""
        return JNP_FIELDS if self.interpret else PtxFields()

    @property
    def parts(self) -> int:
        """The head dimension is handled in this many contiguous parts (the format's)."""
        return self.kv_format.tile_parts


def cols(rows, width: int, interpret: bool):
    """Index a [n] row vector and all ``width`` columns: (rows, :) for the Triton lowering, and
    broadcast int arrays (rows[:, None], iota[None, :]) in interpret mode, whose discharge rules
    do not mix array indexers with slices."""
    if interpret:
        return rows[:, None], jnp.arange(width, dtype=jnp.int32)[None, :]
    return rows, slice(None)


def part_cols(rows, width: int, part: int, interpret: bool):
    """``cols`` for columns ``part * width .. (part + 1) * width`` of the rows."""
    if interpret:
        return rows[:, None], (part * width + jnp.arange(width, dtype=jnp.int32))[None, :]
    return rows, pl.ds(part * width, width)


def load_parts(st: Static, ref, lead, rows, head_dim: int, mask=None):
    """``ref.at[*lead, rows, :]`` (rows [n]) in ``st.parts`` parts ``[n, head_dim / parts]``; masked
    rows (``mask [n]``) read zeros."""
    width = head_dim // st.parts
    out = []
    for j in range(st.parts):
        r, d = part_cols(rows, width, j, st.interpret)
        m = None if mask is None else jnp.broadcast_to(mask[:, None], (rows.shape[0], width))
        out.append(plgpu.load(ref.at[(*lead, r, d)], mask=m, other=None if mask is None else 0.0))
    return tuple(out)


def store_parts(st: Static, ref, lead, rows, parts, mask):
    """``ref.at[*lead, rows, :] = concat(parts)`` where ``mask [n]``, in ``ref``'s dtype."""
    width = parts[0].shape[1]
    for j, x in enumerate(parts):
        r, d = part_cols(rows, width, j, st.interpret)
        plgpu.store(ref.at[(*lead, r, d)], x.astype(ref.dtype), mask=jnp.broadcast_to(mask[:, None], x.shape))


def layer_scales(layout, kv_refs, layer, head):
    """(K scale, V scale) of ``layer`` and KV ``head`` from the storage's refs (``layout``
    addresses them; float32 scalars, ones where the storage keeps no scales)."""
    ref = layout.scales_ref(kv_refs)
    if ref is None:
        return jnp.float32(1.0), jnp.float32(1.0)
    return ref[2 * layer, head], ref[2 * layer + 1, head]


def load_raw_tile(st: Static, kv_refs, which: int, rows, meta_rows):
    """K (``which=0``) or V (1) of the cache rows ``rows [bk]`` as stored: (data ``[bk,
    packed_dim]``, the format's ``meta_width`` metadata vectors ``[bk]`` from their words at
    ``meta_rows [bk]``: one 4-byte load a token); the format's ``tile_codes`` and ``tile_affine``
    read them."""
    layout = st.layout
    data_ref = (layout.k_ref, layout.v_ref)[which](kv_refs)
    r, d = cols(rows, data_ref.shape[1], st.interpret)
    meta = ()
    if st.kv_format.meta_width:
        meta_ref = (layout.k_meta_ref, layout.v_meta_ref)[which](kv_refs)
        meta = unpack_meta_word(plgpu.load(meta_ref.at[meta_rows, 0]))
    return plgpu.load(data_ref.at[r, d]), meta


def as_code_dtype(x, dtype):
    """x in the codes' dtype for the matrix products (saturated to its range: a float16 query
    beyond +-65504 would be inf)."""
    if x.dtype == jnp.dtype(dtype):
        return x
    top = float(jnp.finfo(dtype).max)
    return jnp.clip(x.astype(jnp.float32), -top, top).astype(dtype)


@dataclasses.dataclass(frozen=True)
class TileMap:
    """How a tile's codes map to values, ``x = code * scale`` with ``scale`` a per-layer scalar
    (or None: 1), applied to the products: scores ``s = scale * (q . code)`` and values
    ``(p * scale) . code``."""

    scale: object = None

    def scores(self, s, q_sum):
        """Scores ``[M, bk]`` from the products with the codes ``s = q . code``."""
        return s if self.scale is None else s * self.scale

    def values_update(self, acc, alpha, p, codes):
        """The online softmax's value update: each part ``acc * alpha + (p * scale) . code``;
        p ``[M, bk]`` float32, codes parts ``[bk, w]``."""
        weights = (p if self.scale is None else p * self.scale).astype(codes[0].dtype)
        return tuple(a * alpha[:, None] + dot(weights, c, contract_b=0) for a, c in zip(acc, codes))


@dataclasses.dataclass(frozen=True)
class RowMap:
    """A per-token map on codes that carry a constant ``bias`` (the exponent trick's 1024):
    ``x = (code - bias) * scale + zero``, ``scale``/``zero`` ``[bk]`` float32, all folded into the
    products so that no element is touched after unpacking:
    scores ``scale * (q . code - bias * sum(q)) + zero * sum(q)``; values
    ``w . code - bias * sum(w) + p . zero`` with ``w = p * scale`` rounded once to the codes'
    type (the bias term uses the same rounded ``w``, so it cancels exactly)."""

    scale: object
    zero: object
    bias: float

    def scores(self, s, q_sum):
        if self.bias:
            s = s - self.bias * q_sum[:, None]
        s = s * self.scale[None, :]
        return s if self.zero is None else s + q_sum[:, None] * self.zero[None, :]

    def values_update(self, acc, alpha, p, codes):
        weights = (p * self.scale[None, :]).astype(codes[0].dtype)
        shift = 0.0
        if self.bias:
            shift = -self.bias * jnp.sum(weights.astype(jnp.float32), axis=1)
        if self.zero is not None:
            shift = shift + jnp.sum(p * self.zero[None, :], axis=1)
        return tuple(a * alpha[:, None] + dot(weights, c, contract_b=0) + _column(shift)
                     for a, c in zip(acc, codes))


def tile_codes_and_map(fmt: KVFormat, data, meta, layer_scale, dtype, *, fold_rows: bool, fields: ByteFields):
    """A stored tile as (code parts in ``dtype``, the ``TileMap``/``RowMap`` that turns them into
    values). A per-token scale (and zero point) either folds with the bias of the format's biased
    codes into the products (``fold_rows``: the decode, whose few query rows make the folded
    terms cheaper than touching every element), or is applied to every element in ``dtype`` (the
    prefill, whose many query rows make it the other way round, 2x on the H200). A per-layer
    scale always folds. A zero point needs a per-token scale. ``fields``: how the kernel unpacks
    packed integer fields (``Static.fields``)."""
    scale, zero = fmt.tile_affine(meta, layer_scale)
    if scale is not None and jnp.ndim(scale) == 1:
        if fold_rows:
            parts, bias = fmt.tile_biased_codes(data, dtype, fields=fields)
            return parts, RowMap(scale, zero, bias)
        s, z = _column(scale.astype(dtype)), 0 if zero is None else _column(zero.astype(dtype))
        return tuple(c * s + z for c in fmt.tile_codes(data, dtype, fields=fields)), TileMap(None)
    if zero is not None:
        raise ValueError(f"the kernels fold a zero point with a per-token scale; {fmt.name} gives a zero "
                         f"point with a per-layer scale")
    return fmt.tile_codes(data, dtype, fields=fields), TileMap(scale)


def _column(x):
    """A vector [n] as a column [n, 1] (a scalar stays a scalar)."""
    return x if jnp.ndim(x) == 0 else x[:, None]


def exp2(x, interpret: bool):
    """2**x in float32: one ``ex2.approx.ftz`` instruction on the GPU (relative error about 2**-22;
    results below 2**-126 flush to zero, which a softmax weight can lose). ``jnp.exp2`` would call
    libdevice's ``exp2f``, whose subnormal handling doubles the exponent work of a tile; interpret
    mode uses ``jnp.exp2``."""
    if interpret:
        return jnp.exp2(x)
    [y] = plgpu.elementwise_inline_asm("ex2.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
                                       result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)])
    return y


def reciprocal_rn(x, interpret: bool):
    """``1 / x`` in float32, correctly rounded (``rcp.rn.f32``, as XLA's division rounds; the
    Triton lowering's ``/`` is ``div.full.f32``, approximate); interpret mode divides."""
    if interpret:
        return 1.0 / x
    [y] = plgpu.elementwise_inline_asm("rcp.rn.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
                                       result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)])
    return y


def dot(a, b, *, contract_b: int):
    """a [M, K] x b (contracted on axis ``contract_b``) in float32; exact float32 for f32 inputs."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def row_index(rows, interpret: bool):
    """A leading row index [n] beside ``part_cols``'s: a column [n, 1] in interpret mode."""
    return rows[:, None] if interpret else rows
