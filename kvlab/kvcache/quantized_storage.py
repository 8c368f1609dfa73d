"""The device half of paged-layout caches whose pages hold a quantized KV format
(``kvlab.kvcache.formats``): ``QuantizedPagedKVStorage``; the blocked layout's is
``QuantizedBlockedKVStorage`` (``quantized_blocked.py``).

``QuantizedPagedKVStorage`` keeps per-layer page pools as ``PagedKVStorage`` does, for encoded
data and per-token metadata, plus one ``layer_scales`` array:

* ``k, v``: ``[L, N, P, Hkv, packed_dim]`` of the format's data dtype (uint8 for int8/int4, fp8);
* ``k_meta, v_meta``: ``[L, N, Hkv, P, meta_words]`` uint32, head-major within a page: each
  token's float16 scale and zero point as one word (``pack_meta_word``), so the words of one
  head's consecutive tokens are contiguous and a kernel reads a tile's metadata in coalesced
  4-byte loads (``QuantizedLayout.k_meta_rows``); 0 wide for fp8;
* ``layer_scales``: ``[L, 2, Hkv]`` float32 (fp8's per-layer scales, K at index 0, V at 1).
 ``gather_pages`` dequantizes
only the pages asked for (the jnp reference attention's read); ``write`` encodes new tokens as
they are stored. Host-tier records are the pages' bytes as stored (data then metadata per layer,
LMDeploy's order), so a quantized page moves to the host and back unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.formats.meta_words import meta_word_rows, meta_words, token_meta
from kvlab.kvcache.layouts import PagedLayout, QuantizedLayout
from kvlab.kvcache.page_records import page_record_of, pages_as_records, records_into_pages
from kvlab.kvcache.storage import PagedKVStorage, head_axis


def calibrated(fmt: KVFormat, layer_scales: jax.Array, layer, k_new: jax.Array, v_new: jax.Array,
               slots: jax.Array) -> jax.Array:
    """``layer_scales [L, 2, Hkv]`` with ``layer``'s scales calibrated on its new rows ``[T, Hkv,
    D]`` (formats that calibrate do so on a layer's first write; the others keep them)."""
    valid, scales = slots >= 0, layer_scales[layer]
    fresh = jnp.stack([fmt.calibrate(scales[0], k_new, valid, 0), fmt.calibrate(scales[1], v_new, valid, 1)])
    return layer_scales.at[layer].set(fresh)


def encode_both(storage, layer, k_new: jax.Array, v_new: jax.Array):
    """((K data, K meta), (V data, V meta)) of one layer's new rows, with the storage's format and
    that layer's scales."""
    scales = storage.layer_scales[layer]
    return storage.kv_format.encode(k_new, scales[0]), storage.kv_format.encode(v_new, scales[1])


def paged_storage(kv_format: KVFormat, **dims):
    """The storage of a paged-layout cache in ``kv_format``: ``PagedKVStorage`` for the plain
    format, ``QuantizedPagedKVStorage`` otherwise. ``dims``: ``PagedKVStorage.zeros``'s."""
    if kv_format == PLAIN:
        return PagedKVStorage.zeros(**dims)
    return QuantizedPagedKVStorage.zeros(kv_format, **dims)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedPagedKVStorage:
    """Encoded K/V pages of all layers (see the module docstring for shapes).

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.formats import Int8
        >>> s = QuantizedPagedKVStorage.zeros(Int8(), num_layers=1, num_pages=2, page_size=4,
        ...                                   num_kv_heads=1, head_dim=8, dtype=jnp.float32)
        >>> x = jnp.linspace(-1, 1, 8).reshape(1, 1, 8)
        >>> s = s.write(0, x, x, jnp.array([5]))
        >>> k, v = s.gather_pages(0, jnp.array([1]))
        >>> s.k.dtype, k.shape, float(abs(k[0, 1] - x[0]).max()) < 0.005
        (dtype('uint8'), (1, 4, 1, 8), True)
    """

    k: jax.Array
    v: jax.Array
    k_meta: jax.Array
    v_meta: jax.Array
    layer_scales: jax.Array
    kv_format: Any = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def zeros(cls, kv_format: KVFormat, *, num_layers: int, num_pages: int, page_size: int,
              num_kv_heads: int, head_dim: int, dtype) -> QuantizedPagedKVStorage:
        kv_format.check(num_kv_heads=num_kv_heads, head_dim=head_dim)
        rows = (num_layers, num_pages, page_size, num_kv_heads)
        def data():                        # separate buffers: the step donates each one
            return jnp.zeros((*rows, kv_format.packed_dim(head_dim)), kv_format.data_dtype(dtype))

        def meta():                        # head-major words
            shape = (num_layers, num_pages, num_kv_heads, page_size, meta_words(kv_format))
            return jnp.zeros(shape, jnp.uint32)
        scales = jnp.asarray(kv_format.initial_layer_scales(num_layers=num_layers, num_kv_heads=num_kv_heads))
        return cls(k=data(), v=data(), k_meta=meta(), v_meta=meta(), layer_scales=scales, kv_format=kv_format,
                   dtype=jnp.dtype(dtype))

    def head_specs(self, axis: str) -> QuantizedPagedKVStorage:
        data, meta = head_axis(5, 3, axis), head_axis(5, 2, axis)
        return dataclasses.replace(self, k=data, v=data, k_meta=meta, v_meta=meta,
                                   layer_scales=head_axis(3, 2, axis))

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[3]

    @property
    def layout(self) -> QuantizedLayout:
        """Data rows in ``PagedLayout``'s numbering; metadata words head-major within a page."""
        rows = PagedLayout(num_pages=self.num_pages, page_size=self.page_size, num_kv_heads=self.num_kv_heads)
        return QuantizedLayout(rows, num_data=2)

    @property
    def arrays(self) -> tuple[jax.Array, ...]:
        """(k, v, k_meta, v_meta, layer_scales); without the metadata arrays where the format has
        none (fp8: they are 0 wide)."""
        meta = (self.k_meta, self.v_meta) if self.kv_format.meta_width else ()
        return self.k, self.v, *meta, self.layer_scales

    def with_arrays(self, arrays) -> QuantizedPagedKVStorage:
        k, v, *meta, layer_scales = arrays
        k_meta, v_meta = meta or (self.k_meta, self.v_meta)
        return dataclasses.replace(self, k=k, v=v, k_meta=k_meta, v_meta=v_meta, layer_scales=layer_scales)

    def gather_pages(self, layer, pages: jax.Array, whole=None) -> tuple[jax.Array, jax.Array]:
        """Dequantized K and V of ``pages`` in one layer: each ``[*pages.shape, P, Hkv, D]``."""
        fmt, scales = self.kv_format, self.layer_scales[layer]
        k = fmt.decode(self.k[layer, pages], token_meta(self.k_meta[layer, pages]), scales[0], self.dtype)
        v = fmt.decode(self.v[layer, pages], token_meta(self.v_meta[layer, pages]), scales[1], self.dtype)
        return k, v

    def calibrate(self, layer, k_new: jax.Array, v_new: jax.Array,
                  slots: jax.Array) -> QuantizedPagedKVStorage:
        """The storage with ``layer``'s scales calibrated for writing these rows (``write`` and the
        KV write kernel call it first)."""
        return dataclasses.replace(self, layer_scales=calibrated(self.kv_format, self.layer_scales, layer,
                                                                 k_new, v_new, slots))

    def write(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> QuantizedPagedKVStorage:
        """Encode and scatter one layer's new tokens. k_new, v_new: [T, Hkv, D]; slots: [T] flat
        ``page * page_size + offset``, negative for padding rows (dropped). A format that
        calibrates sets the layer's scales from the valid rows on its first write."""
        self = self.calibrate(layer, k_new, v_new, slots)
        (k_data, k_meta), (v_data, v_meta) = encode_both(self, layer, k_new, v_new)
        page = jnp.where(slots >= 0, slots // self.page_size, self.num_pages)     # OOB -> dropped
        offset = jnp.where(slots >= 0, slots % self.page_size, 0)
        at = (layer, page, offset)
        heads = jnp.arange(self.num_kv_heads)[None, :]
        meta_at = (layer, page[:, None], heads, offset[:, None])                  # [T, Hkv] words
        return dataclasses.replace(
            self, k=self.k.at[at].set(k_data, mode="drop"), v=self.v.at[at].set(v_data, mode="drop"),
            k_meta=self.k_meta.at[meta_at].set(meta_word_rows(k_meta), mode="drop"),
            v_meta=self.v_meta.at[meta_at].set(meta_word_rows(v_meta), mode="drop"))

    # ---- host-tier records: the pages' bytes as stored -------------------------------------------
    @property
    def page_record(self) -> jax.ShapeDtypeStruct:
        """One page's host-tier record: uint8 ``[L, bytes per layer]``."""
        return page_record_of((self.k, self.v, self.k_meta, self.v_meta))

    def read_pages(self, pages: jax.Array) -> jax.Array:
        """Whole pages as bytes: uint8 ``[n, L, record_bytes_per_layer]`` (per layer: K data,
        V data, K metadata, V metadata)."""
        return pages_as_records((self.k, self.v, self.k_meta, self.v_meta), pages)

    def write_pages(self, pages: jax.Array, data: jax.Array) -> QuantizedPagedKVStorage:
        """Inverse of ``read_pages``; out-of-range page ids are dropped (padding)."""
        k, v, k_meta, v_meta = records_into_pages((self.k, self.v, self.k_meta, self.v_meta), pages, data)
        return dataclasses.replace(self, k=k, v=v, k_meta=k_meta, v_meta=v_meta)
