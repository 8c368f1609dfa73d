"""Asymmetric integer KV (LMDeploy TurboMind's ``quant_policy`` 8 and 4): each token's K or V row
of one head gets its own scale and zero point, computed online when it is written; no calibration.

    scale = (max - min) / (2**bits - 1),  zero = min          (both rounded to float16, stored)
    q     = clip(floor((x - zero) / scale + 1/2), 0, 2**bits - 1)    (unsigned, ``bits`` wide)
    x'    = q * scale + zero

so ``|x - x'| <= scale / 2`` up to the float16 rounding of scale and zero (rounding half up, which
the GPU kernels compute with the same operations). Narrow codes are packed
into bytes by splitting the head dimension: for int4, byte ``j`` holds element ``j`` in its low
nibble and element ``j + D/2`` in its high one (a kernel unpacks two contiguous halves of the row,
no interleave); 2-bit codes pack four quarters the same way.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.kvcache.formats.base import (
    META_DTYPE,
    ByteFields,
    RowFormat,
    decode_rows_by_tiles,
    encode_rows_by_tiles,
    exact_code_dtype,
)


@dataclasses.dataclass(frozen=True)
class JnpFields:
    """``ByteFields`` in jnp, one element at a time: a shift, a mask, a widening to 16 bits and an
    or with 0x6400 (1024.0's bits); the specification."""

    def biased_float16(self, data, bits):
        biased = [byte_field(data, bits, i).astype(jnp.uint16) | jnp.uint16(0x6400) for i in range(8 // bits)]
        return tuple(jax.lax.bitcast_convert_type(b, jnp.float16) for b in biased)


def byte_field(data, bits: int, i: int):
    """Field ``i`` (bits ``i * bits`` up) of each byte of uint8 ``data``, as uint8."""
    return data if bits == 8 else (data >> (i * bits)) & jnp.uint8((1 << bits) - 1)


JNP_FIELDS = JnpFields()


@dataclasses.dataclass(frozen=True, kw_only=True)
class AsymmetricInt(RowFormat):
    """Per token-and-head asymmetric ``bits``-bit integers (8, 4 or 2), packed into uint8."""

    bits: int = 8
    meta_width: int = 2                   # (scale, zero) per token and head, float16

    def __post_init__(self):
        if self.bits not in (2, 4, 8):
            raise ValueError(f"bits must be 8, 4 or 2, got {self.bits!r}")

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def check(self, *, num_kv_heads: int, head_dim: int) -> None:
        per_byte = 8 // self.bits
        if head_dim % per_byte:
            raise ValueError(f"{self.name} KV packs {per_byte} values a byte along the head dimension, "
                             f"so head_dim must be a multiple of {per_byte}; got {head_dim}")

    def data_dtype(self, model_dtype) -> jnp.dtype:
        return jnp.dtype(jnp.uint8)

    def packed_dim(self, head_dim: int) -> int:
        return head_dim * self.bits // 8

    def initial_layer_scales(self, *, num_layers: int, num_kv_heads: int) -> np.ndarray:
        return np.ones((num_layers, 2, num_kv_heads), np.float32)

    def calibrate(self, layer_scale, x, valid, which):
        return layer_scale

    @property
    def tile_parts(self) -> int:
        """Codes per byte: byte ``j`` holds element ``j + i * D / tile_parts`` in bits ``i * bits``."""
        return 8 // self.bits

    def encode(self, x: jax.Array, layer_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
        return encode_rows_by_tiles(self, x, layer_scale)

    def decode(self, data: jax.Array, meta: jax.Array, layer_scale: jax.Array, dtype) -> jax.Array:
        return decode_rows_by_tiles(self, data, meta, layer_scale, dtype)

    def encode_tile(self, parts, layer_scale, *, reciprocal=None):
        """Each row's scale and zero point over all its parts, then the codes packed into bytes
        (``reciprocal``: as in ``quantize``)."""
        parts = tuple(p.astype(jnp.float32) for p in parts)
        lo = functools.reduce(jnp.minimum, [p.min(axis=-1) for p in parts])
        hi = functools.reduce(jnp.maximum, [p.max(axis=-1) for p in parts])
        scale, zero = self.affine(lo, hi)
        data = None
        for i, p in enumerate(parts):
            q = self.quantize(p, scale[..., None], zero[..., None], reciprocal=reciprocal).astype(jnp.uint8)
            data = q if data is None else data | (q << (i * self.bits))
        return data, (scale, zero)

    def affine(self, lo, hi):
        """The float16 ``(scale, zero)`` of values spanning ``[lo, hi]`` (any matching shapes),
        the range first clipped to float16's finite one: values beyond it saturate, as fp8's do,
        instead of turning the row's scale or zero point infinite."""
        limit = float(jnp.finfo(META_DTYPE).max)
        lo, hi = jnp.clip(lo, -limit, limit), jnp.clip(hi, -limit, limit)
        return ((hi - lo) / self.levels).astype(META_DTYPE), lo.astype(META_DTYPE)

    def quantize(self, x, scale, zero, *, reciprocal=None):
        """Float32 codes (whole numbers in ``[0, levels]``) of float32 ``x`` under float16
        ``scale``/``zero`` broadcasting against it, rounding half up. ``reciprocal(x)``: ``1 /
        x`` correctly rounded (a GPU kernel passes its own: the Triton lowering's division is
        approximate, which would put some codes a step from the reference's)."""
        s32 = scale.astype(jnp.float32)
        s32 = jnp.where(s32 > 0, s32, 1.0)
        inv = 1.0 / s32 if reciprocal is None else reciprocal(s32)
        return jnp.clip(jnp.floor((x - zero.astype(jnp.float32)) * inv + 0.5), 0, self.levels)

    def code_dtype(self, model_dtype) -> jnp.dtype:
        return exact_code_dtype(model_dtype)

    def tile_biased_codes(self, data, dtype, *, fields: ByteFields | None = None):
        """The codes unpacked part by part, plus 1024 in float16 (the exponent trick: the field
        under the mantissa of 1024.0, integer operations only, no conversion instruction), by
        ``fields`` (``JnpFields`` unless a kernel passes its own); other types by conversion, no
        bias."""
        if jnp.dtype(dtype) == jnp.float16:
            return (fields or JNP_FIELDS).biased_float16(data, self.bits), 1024.0
        return tuple(byte_field(data, self.bits, i).astype(dtype) for i in range(self.tile_parts)), 0.0

    def tile_codes(self, data, dtype, *, fields: ByteFields | None = None):
        """The exact codes: ``tile_biased_codes`` less its bias."""
        parts, bias = self.tile_biased_codes(data, dtype, fields=fields)
        return parts if not bias else tuple(p - jnp.asarray(bias, p.dtype) for p in parts)

    def tile_affine(self, meta, layer_scale):
        """The row's own float16 scale and zero point."""
        scale, zero = meta
        return scale.astype(jnp.float32), zero.astype(jnp.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Int8(AsymmetricInt):
    """8-bit asymmetric KV (LMDeploy ``quant_policy=8``).

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.formats import Int8
        >>> fmt = Int8()
        >>> x = jnp.linspace(-1.0, 1.0, 8).reshape(1, 1, 8)
        >>> data, meta = fmt.encode(x, jnp.ones(1))
        >>> data.dtype, float(abs(fmt.decode(data, meta, jnp.ones(1), jnp.float32) - x).max()) < 0.005
        (dtype('uint8'), True)
    """

    bits: int = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class Int4(AsymmetricInt):
    """4-bit asymmetric KV, two codes a byte (LMDeploy ``quant_policy=4``)."""

    bits: int = 4
