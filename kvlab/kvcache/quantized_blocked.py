"""The device half of the blocked cache when its blocks hold a quantized KV format
(``kvlab.kvcache.formats``): ``QuantizedBlockedKVStorage``, LMDeploy TurboMind's blocked layout
with its quantized KV (see ``quantized_storage.py`` for the paged layout's and the shared rules).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from kvlab.kvcache.blocked_storage import BlockedKVStorage
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.formats.meta_words import meta_word_rows, meta_words, token_meta
from kvlab.kvcache.layouts import BlockedLayout, QuantizedLayout
from kvlab.kvcache.page_records import as_bytes, from_bytes
from kvlab.kvcache.quantized_storage import calibrated, encode_both
from kvlab.kvcache.storage import head_axis


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedBlockedKVStorage:
    """Encoded K/V of all layers per block (LMDeploy TurboMind's blocked layout with its quantized
    KV): ``blocks [N, L, 2, P, Hkv, packed_dim]`` of the format's data dtype, ``meta [N, L, 2, Hkv, P,
    meta_words]`` uint32 (each token's float16 scale and zero point as one word, head-major within
    a block, as in ``QuantizedPagedKVStorage``), ``layer_scales [L, 2, Hkv]`` float32. A block's
    host record holds its data of every layer and then their scales and zero points.

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.formats import Int4
        >>> s = QuantizedBlockedKVStorage.zeros(Int4(), num_layers=2, num_pages=3, page_size=4,
        ...                                     num_kv_heads=1, head_dim=8, dtype=jnp.float32)
        >>> s.blocks.shape, s.page_record.shape     # per layer: 2 x 4 rows x (4 B int4 + 4 B meta)
        ((3, 2, 2, 4, 1, 4), (2, 64))
    """

    blocks: jax.Array
    meta: jax.Array
    layer_scales: jax.Array
    kv_format: Any = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def zeros(cls, kv_format: KVFormat, *, num_layers: int, num_pages: int, page_size: int,
              num_kv_heads: int, head_dim: int, dtype) -> QuantizedBlockedKVStorage:
        kv_format.check(num_kv_heads=num_kv_heads, head_dim=head_dim)
        rows = (num_pages, num_layers, 2, page_size, num_kv_heads)
        scales = kv_format.initial_layer_scales(num_layers=num_layers, num_kv_heads=num_kv_heads)
        return cls(blocks=jnp.zeros((*rows, kv_format.packed_dim(head_dim)), kv_format.data_dtype(dtype)),
                   meta=jnp.zeros((num_pages, num_layers, 2, num_kv_heads, page_size, meta_words(kv_format)),
                                  jnp.uint32),
                   layer_scales=jnp.asarray(scales), kv_format=kv_format, dtype=jnp.dtype(dtype))

    def head_specs(self, axis: str) -> QuantizedBlockedKVStorage:
        return dataclasses.replace(self, blocks=head_axis(6, 4, axis), meta=head_axis(6, 3, axis),
                                   layer_scales=head_axis(3, 2, axis))

    @property
    def page_size(self) -> int:
        return self.blocks.shape[3]

    @property
    def num_pages(self) -> int:
        return self.blocks.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.blocks.shape[4]

    @property
    def layout(self) -> QuantizedLayout:
        """Data rows in ``BlockedLayout``'s numbering; metadata words head-major within a block."""
        rows = BlockedLayout(num_layers=self.blocks.shape[1], page_size=self.page_size,
                             num_kv_heads=self.num_kv_heads)
        return QuantizedLayout(rows, num_data=1)

    @property
    def arrays(self) -> tuple[jax.Array, ...]:
        """(blocks, meta, layer_scales); without ``meta`` where the format has none (fp8)."""
        meta = (self.meta,) if self.kv_format.meta_width else ()
        return self.blocks, *meta, self.layer_scales

    def with_arrays(self, arrays) -> QuantizedBlockedKVStorage:
        blocks, *meta, layer_scales = arrays
        return dataclasses.replace(self, blocks=blocks, meta=meta[0] if meta else self.meta,
                                   layer_scales=layer_scales)

    def gather_pages(self, layer, pages: jax.Array, whole=None) -> tuple[jax.Array, jax.Array]:
        """Dequantized K and V of ``pages`` in one layer: each ``[*pages.shape, P, Hkv, D]``."""
        fmt, scales = self.kv_format, self.layer_scales[layer]
        data, meta = self.blocks[pages, layer], self.meta[pages, layer]          # [..., 2, P|Hkv, ...]
        return (fmt.decode(data[..., 0, :, :, :], token_meta(meta[..., 0, :, :, :]), scales[0], self.dtype),
                fmt.decode(data[..., 1, :, :, :], token_meta(meta[..., 1, :, :, :]), scales[1], self.dtype))

    def calibrate(self, layer, k_new: jax.Array, v_new: jax.Array,
                  slots: jax.Array) -> QuantizedBlockedKVStorage:
        """See ``QuantizedPagedKVStorage.calibrate``."""
        return dataclasses.replace(self, layer_scales=calibrated(self.kv_format, self.layer_scales, layer,
                                                                 k_new, v_new, slots))

    def write(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> QuantizedBlockedKVStorage:
        """Encode and scatter one layer's new tokens (see ``QuantizedPagedKVStorage.write``)."""
        self = self.calibrate(layer, k_new, v_new, slots)
        (k_data, k_meta), (v_data, v_meta) = encode_both(self, layer, k_new, v_new)
        block = jnp.where(slots >= 0, slots // self.page_size, self.num_pages)
        offset = jnp.where(slots >= 0, slots % self.page_size, 0)
        at = (block, layer, slice(None), offset)
        heads = jnp.arange(self.num_kv_heads)[None, None, :]
        meta_at = (block[:, None, None], layer, jnp.arange(2)[None, :, None], heads, offset[:, None, None])
        words = jnp.stack([meta_word_rows(k_meta), meta_word_rows(v_meta)], axis=1)    # [T, 2, Hkv, W]
        return dataclasses.replace(
            self, blocks=self.blocks.at[at].set(jnp.stack([k_data, v_data], axis=1), mode="drop"),
            meta=self.meta.at[meta_at].set(words, mode="drop"))

    @property
    def page_record(self) -> jax.ShapeDtypeStruct:
        """One block's host record: uint8 ``[L, bytes per layer]`` (data, then metadata)."""
        per_layer = sum(a.dtype.itemsize * math.prod(a.shape[2:]) for a in (self.blocks, self.meta))
        return jax.ShapeDtypeStruct((self.blocks.shape[1], per_layer), jnp.uint8)

    def read_pages(self, pages: jax.Array) -> jax.Array:
        """Whole blocks as bytes: uint8 ``[n, L, bytes per layer]``."""
        return jnp.concatenate([as_bytes(self.blocks[pages], 2), as_bytes(self.meta[pages], 2)], axis=-1)

    def write_pages(self, pages: jax.Array, data: jax.Array) -> QuantizedBlockedKVStorage:
        """Inverse of ``read_pages``; out-of-range block ids are dropped (padding)."""
        out, start = [], 0
        for arr in (self.blocks, self.meta):
            shape = (data.shape[0], *arr.shape[1:])
            size = arr.dtype.itemsize * math.prod(arr.shape[2:])
            piece = from_bytes(data[..., start:start + size], shape, arr.dtype)
            out.append(arr.at[pages].set(piece, mode="drop", unique_indices=True))
            start += size
        return dataclasses.replace(self, blocks=out[0], meta=out[1])


def blocked_storage(kv_format: KVFormat, **dims):
    """``BlockedKVStorage`` for the plain format, ``QuantizedBlockedKVStorage`` otherwise."""
    if kv_format == PLAIN:
        return BlockedKVStorage.zeros(**dims)
    return QuantizedBlockedKVStorage.zeros(kv_format, **dims)
