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

from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, KVFormat, unpack_meta_word

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


def applied_per_element(codes, scale, zero):
    """The code tile with the part of its map that cannot be folded into the products applied,
    in the codes' dtype (one fused multiply-add an element): a per-token map (``scale`` [bk]) or
    any zero point. Returns (parts, the scale left to fold: a scalar, or None)."""
    if zero is None and (scale is None or scale.ndim == 0):
        return codes, scale
    dtype = codes[0].dtype
    s = 1 if scale is None else _column(scale.astype(dtype))
    z = 0 if zero is None else _column(zero.astype(dtype))
    return tuple(c * s + z for c in codes), None


def _column(x):
    """A per-token vector [bk] as a column [bk, 1] (a scalar stays a scalar)."""
    return x if x.ndim == 0 else x[:, None]


def scaled_scores(s, scale):
    """Scores of the codes ``s = q . code [M, bk]`` times a per-layer scale (a scalar, or None: 1)."""
    return s if scale is None else s * scale


def values_update(acc, alpha, p, codes, scale):
    """The online softmax's value update with V stored as ``code * scale`` (a per-layer scalar,
    or None: 1): each part ``acc * alpha + (p * scale) . code``; p ``[M, bk]`` float32, codes
    parts ``[bk, w]``."""
    weights = (p if scale is None else p * scale).astype(codes[0].dtype)
    return tuple(a * alpha[:, None] + dot(weights, c, contract_b=0) for a, c in zip(acc, codes))


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


def dot(a, b, *, contract_b: int):
    """a [M, K] x b (contracted on axis ``contract_b``) in float32; exact float32 for f32 inputs."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def row_index(rows, interpret: bool):
    """A leading row index [n] beside ``part_cols``'s: a column [n, 1] in interpret mode."""
    return rows[:, None] if interpret else rows
