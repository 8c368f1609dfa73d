"""KIVI (Liu et al., 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"):
keys quantized *per channel* over a group of tokens, values *per token*, and the tokens of a group
that is not yet full kept in full precision until it fills.

Keys have outlier channels (a few channels are large for every token), so one scale per token
spends the code range on the outliers; a scale per channel over a group of tokens does not.
Values have no such channels and are quantized per token as ``AsymmetricInt`` does. Here the
group is the cache's page: ``group_size`` must equal ``page_size``.

What a query reads (the specification the cache, the reference attention and the dense reference
share): a query at position ``p`` reads the keys and values of page ``j`` *as stored once the page
is full* (quantized) when it sees the whole page, ``p >= (j + 1) * group_size - 1``, and in full
precision otherwise. The answer depends on positions only, never on how the tokens were split
into steps, so any schedule gives the same tokens.

Shapes, per page of ``G = group_size`` tokens: K and V ``[..., G, Hkv, D]`` ->

* ``k_data``, ``v_data``: ``[..., G, Hkv, packed_dim]`` uint8 (codes packed along the head
  dimension like ``AsymmetricInt``: byte ``j`` holds element ``j + i * D / parts`` in bits
  ``i * bits``);
* ``k_meta``: ``[..., Hkv, 2, D]`` float16, each channel's scale and zero point over the page;
* ``v_meta``: ``[..., G, Hkv, 2]`` float16, each token's scale and zero point.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.kvcache.formats.base import META_DTYPE, PLAIN, decode_tile
from kvlab.kvcache.formats.integer import AsymmetricInt
from kvlab.kvcache.staging import StagedWrites


def pack_codes(codes: jax.Array, bits: int) -> jax.Array:
    """uint8 codes ``[..., D]`` (each below ``2**bits``) -> bytes ``[..., D * bits / 8]``: the head
    dimension split in ``8 / bits`` contiguous parts, part ``i`` in bits ``i * bits``."""
    out = None
    for i, part in enumerate(jnp.split(codes, 8 // bits, axis=-1)):
        out = part if out is None else out | (part << (i * bits))
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Kivi:
    """KIVI keys per channel over a page, values per token, ``bits`` 2 or 4 (see the module
    docstring); ``staging_pages``: full-precision pages the cache keeps for pages not yet full
    (every running sequence's last page and the pages one step writes).

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.formats import Kivi
        >>> fmt = Kivi(bits=2, group_size=4)
        >>> k = jnp.arange(4 * 8, dtype=jnp.float32).reshape(4, 1, 8)    # [G, Hkv, D]
        >>> k_stored, v_stored = fmt.round_trip(k, k, jnp.float32)
        >>> bool(jnp.allclose(k_stored, k))          # per channel: each channel is a ramp over G
        True
    """

    bits: int = 2
    group_size: int = 32
    staging_pages: int = 64

    def __post_init__(self):
        if self.bits not in (2, 4):
            raise ValueError(f"KIVI stores 2- or 4-bit codes; got bits={self.bits!r}")
        if self.group_size < 2 or self.group_size & (self.group_size - 1):
            raise ValueError(f"group_size must be a power of two >= 2 (it is the page size); "
                             f"got {self.group_size}")
        if self.staging_pages < 1:
            raise ValueError(f"staging_pages must be >= 1; got {self.staging_pages}")

    @property
    def name(self) -> str:
        return f"kivi{self.bits}"

    @property
    def ints(self) -> AsymmetricInt:
        """The per-row integer codec KIVI applies to value rows and to key channels."""
        return AsymmetricInt(bits=self.bits)

    def check(self, *, num_kv_heads: int, head_dim: int) -> None:
        per_byte = 8 // self.bits
        if head_dim % per_byte:
            raise ValueError(f"{self.name} KV packs {per_byte} codes a byte along the head dimension, so "
                             f"head_dim must be a multiple of {per_byte}; got {head_dim}")

    def check_page_size(self, page_size: int) -> None:
        """Raise ValueError unless the cache's pages are the key groups."""
        if page_size != self.group_size:
            raise ValueError(f"KIVI quantizes keys per channel over a page, so the cache's page_size must "
                             f"equal the format's group_size ({self.group_size}); got page_size {page_size}")

    @property
    def tile_parts(self) -> int:
        """The head dimension in ``8 / bits`` contiguous parts, as the codes are packed."""
        return 8 // self.bits

    def tile_tokens(self, block_k: int, page_size: int) -> int:
        """Tokens a kernel's KV tile holds: the page, whatever ``block_k`` (the key scales are per
        page, so a tile is one page)."""
        return page_size

    def code_dtype(self, model_dtype) -> jnp.dtype:
        """The float type a kernel multiplies codes in (float16 for a 16-bit model)."""
        return self.ints.code_dtype(model_dtype)

    # ---- tiles, for the kernels: elementwise operations and reductions only ----------------------
    def round_trip_key_tile(self, parts: tuple[jax.Array, ...], dtype, *,
                            reciprocal=None) -> tuple[jax.Array, ...]:
        """A whole page's keys ``[G, D / tile_parts]`` per part (tokens in rows) as a query that
        sees the page whole reads them: each channel (column) quantized over the page's tokens
        and decoded, in ``dtype``; equal to ``round_trip``'s keys (``reciprocal``: see
        ``AsymmetricInt.quantize``)."""
        ints, out = self.ints, []
        for p in parts:
            p = p.astype(jnp.float32)
            scale, zero = ints.affine(p.min(axis=0), p.max(axis=0))
            codes = ints.quantize(p, scale[None, :], zero[None, :], reciprocal=reciprocal)
            out.append((codes * scale.astype(jnp.float32)[None, :] + zero.astype(jnp.float32)[None, :])
                       .astype(dtype))
        return tuple(out)

    def round_trip_value_tile(self, parts: tuple[jax.Array, ...], dtype, *,
                              reciprocal=None) -> tuple[jax.Array, ...]:
        """A whole page's values ``[G, D / tile_parts]`` per part, each token (row) quantized over
        its head dimension and decoded, in ``dtype``; equal to ``round_trip``'s values."""
        ints = self.ints
        data, meta = ints.encode_tile(parts, jnp.float32(1.0), reciprocal=reciprocal)
        return decode_tile(ints, data, meta, jnp.float32(1.0), dtype)

    def page_writes(self, *, num_pages: int, page_size: int) -> StagedWrites:
        """Pages fill in ``staging_pages`` full-precision pages and are sealed when full."""
        self.check_page_size(page_size)
        return StagedWrites(num_sealed=num_pages, num_staging=self.staging_pages, page_size=self.group_size,
                            format_name=self.name)

    @property
    def write_format(self):
        """New rows are written to staging pages in the model's dtype: ``PLAIN``."""
        return PLAIN

    def packed_dim(self, head_dim: int) -> int:
        return head_dim * self.bits // 8

    def token_bytes(self, *, head_dim: int, model_dtype) -> float:
        """Bytes one token's K and V take per KV head and layer, metadata included (each key
        channel's scale and zero point are shared by the page's ``group_size`` tokens)."""
        item = jnp.dtype(META_DTYPE).itemsize
        return 2 * self.packed_dim(head_dim) + 2 * item + 2 * head_dim * item / self.group_size

    # ---- one page ---------------------------------------------------------------------------------
    def encode_group(self, k: jax.Array, v: jax.Array):
        """Full pages ``k, v [..., G, Hkv, D]`` -> ``(k_data, k_meta, v_data, v_meta)`` (shapes in
        the module docstring)."""
        ints = self.ints
        channels = jnp.moveaxis(k, -3, -1)                                 # [..., Hkv, D, G]
        codes, (scale, zero) = ints.encode_tile((channels,), jnp.float32(1.0))   # one part: unpacked
        k_data = pack_codes(jnp.moveaxis(codes, -1, -3), self.bits)        # [..., G, Hkv, packed]
        k_meta = jnp.stack([scale, zero], axis=-2).astype(META_DTYPE)      # [..., Hkv, 2, D]
        v_data, v_meta = ints.encode(v, jnp.ones(v.shape[-2], jnp.float32))
        return k_data, k_meta, v_data, v_meta

    def decode_group(self, k_data, k_meta, v_data, v_meta, dtype) -> tuple[jax.Array, jax.Array]:
        """Inverse of ``encode_group``: K and V ``[..., G, Hkv, D]`` in ``dtype``."""
        ints = self.ints
        codes = jnp.concatenate(ints.tile_codes(k_data, jnp.float32), axis=-1)   # [..., G, Hkv, D]
        meta = k_meta.astype(jnp.float32)
        k = codes * meta[..., None, :, 0, :] + meta[..., None, :, 1, :]
        v = ints.decode(v_data, v_meta, jnp.ones(v_data.shape[-2], jnp.float32), dtype)
        return k.astype(dtype), v

    def round_trip(self, k: jax.Array, v: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
        """Full pages as a query that sees them whole reads them: encode, then decode."""
        return self.decode_group(*self.encode_group(k, v), dtype)

    def initial_layer_scales(self, *, num_layers: int, num_kv_heads: int) -> np.ndarray:
        """``[L, 2, Hkv]`` ones: KIVI has no per-layer scales."""
        return np.ones((num_layers, 2, num_kv_heads), np.float32)

    def dense_view(self, k: jax.Array, v: jax.Array, layer_scale=None):
        """One sequence's rows ``[N, Hkv, D]`` as stored, for a dense reference: ``(k_stored,
        v_stored, stored_from)`` where every complete group is round-tripped (the partial last
        group as given), and ``stored_from [N]`` int32 is, per key, the first query position that
        reads it quantized (the last position of its group; ``N`` where the group is incomplete):
        query ``p`` reads key ``i`` quantized iff ``p >= stored_from[i]``."""
        n, g = k.shape[0], self.group_size
        full = n // g * g
        kq, vq = self.round_trip(k[:full].reshape(-1, g, *k.shape[1:]),
                                 v[:full].reshape(-1, g, *v.shape[1:]), k.dtype)
        k_full = jnp.concatenate([kq.reshape(full, *k.shape[1:]), k[full:]])
        v_full = jnp.concatenate([vq.reshape(full, *v.shape[1:]), v[full:]])
        idx = jnp.arange(n, dtype=jnp.int32)
        end = (idx // g + 1) * g - 1
        return k_full, v_full, jnp.where(idx < full, end, n)
