"""Asymmetric integer KV (LMDeploy TurboMind's ``quant_policy`` 8 and 4): each token's K or V row
of one head gets its own scale and zero point, computed online when it is written; no calibration.

    scale = (max - min) / (2**bits - 1),  zero = min          (both rounded to float16, stored)
    q     = clip(round((x - zero) / scale), 0, 2**bits - 1)    (unsigned, ``bits`` wide)
    x'    = q * scale + zero

so ``|x - x'| <= scale / 2`` up to the float16 rounding of scale and zero. Narrow codes are packed
into bytes by splitting the head dimension: for int4, byte ``j`` holds element ``j`` in its low
nibble and element ``j + D/2`` in its high one (a kernel unpacks two contiguous halves of the row,
no interleave); 2-bit codes pack four quarters the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.kvcache.formats.base import META_DTYPE


def pack(q: jax.Array, bits: int) -> jax.Array:
    """q: [..., D] integer codes < 2**bits -> [..., D * bits / 8] uint8 (split-halves packing)."""
    per_byte = 8 // bits
    parts = jnp.split(q.astype(jnp.uint8), per_byte, axis=-1)
    out = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        out = out | (part << (i * bits))
    return out


def unpack(data: jax.Array, bits: int) -> jax.Array:
    """Inverse of ``pack``: [..., D * bits / 8] uint8 -> [..., D] uint8 codes."""
    per_byte, mask = 8 // bits, (1 << bits) - 1
    return jnp.concatenate([(data >> (i * bits)) & mask for i in range(per_byte)], axis=-1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AsymmetricInt:
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

    def encode(self, x: jax.Array, layer_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
        x32 = x.astype(jnp.float32)
        lo, hi = x32.min(axis=-1), x32.max(axis=-1)
        scale = ((hi - lo) / self.levels).astype(META_DTYPE)
        zero = lo.astype(META_DTYPE)
        s32 = scale.astype(jnp.float32)
        safe = jnp.where(s32 > 0, s32, 1.0)
        q = jnp.clip(jnp.round((x32 - zero.astype(jnp.float32)[..., None]) / safe[..., None]), 0, self.levels)
        return pack(q, self.bits), jnp.stack([scale, zero], axis=-1)

    def decode(self, data: jax.Array, meta: jax.Array, layer_scale: jax.Array, dtype) -> jax.Array:
        q = unpack(data, self.bits).astype(jnp.float32)
        meta = meta.astype(jnp.float32)
        return (q * meta[..., 0:1] + meta[..., 1:2]).astype(dtype)


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
