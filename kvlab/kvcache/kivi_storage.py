"""The device half of a KIVI cache (``kvlab.kvcache.formats.Kivi``): sealed pages, quantized as
KIVI stores them, and a pool of full-precision *staging* pages for pages not yet full.

Page ids share one space: ``[0, N)`` are sealed pages, ``[N, N + R)`` the staging pages (staging
page ``r`` is id ``N + r``). New tokens are always written to staging pages; once a page is full
and the step that filled it has run, the host cache *seals* it (``seal_pages``: quantize a staging
page into a sealed one, keys per channel over the page) and points the sequence's page table at the
sealed id. Arrays:

* ``k, v``: ``[L, N, P, Hkv, packed_dim]`` uint8 codes of sealed pages;
* ``k_meta``: ``[L, N, Hkv, 2, D]`` float16 per-channel key scale and zero point of each page;
* ``v_meta``: ``[L, N, Hkv, P, 1]`` uint32, each token's value scale and zero point as one word
  (two float16 halves, ``formats.base.pack_meta_word``), head-major within a page so that a
  kernel loads a page's words for one head with one coalesced load;
* ``stage_k, stage_v``: ``[L, R, P, Hkv, D]`` in the model's dtype.

``gather_pages(layer, pages, whole)`` reads sealed pages decoded and staging pages in full
precision, except where ``whole`` says the reading query sees the page whole: then as the page
will be stored once sealed (the format's read rule), so a page reads the same before and after
sealing. Sealed pages are never written in place; only they are reused, so only they have
host-tier records (``read_pages``). The Pallas kernels read the arrays through ``layout``
(``KiviLayout``), new rows are written to staging pages as the model's dtype, and sealing is the
jnp ``seal_pages``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from kvlab.kvcache.formats.base import META_DTYPE
from kvlab.kvcache.formats.meta_words import meta_word_rows, token_meta
from kvlab.kvcache.kivi_layout import KiviLayout
from kvlab.kvcache.page_records import page_record_of, pages_as_records, records_into_pages
from kvlab.kvcache.storage import head_axis


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KiviPagedKVStorage:
    """Sealed KIVI pages plus full-precision staging pages (shapes in the module docstring).

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.formats import Kivi
        >>> s = KiviPagedKVStorage.zeros(Kivi(group_size=4, staging_pages=2), num_layers=1, num_pages=3,
        ...                              page_size=4, num_kv_heads=1, head_dim=8, dtype=jnp.float32)
        >>> x = jnp.linspace(-1, 1, 32).reshape(4, 1, 8)
        >>> s = s.write(0, x, x, jnp.arange(12, 16))              # staging page 0 is id 3
        >>> k, _ = s.gather_pages(0, jnp.array([3]))             # full precision until sealed
        >>> s = s.seal_pages(jnp.array([3]), jnp.array([1]))
        >>> k_sealed, _ = s.gather_pages(0, jnp.array([1]))
        >>> bool((k == x).all()), s.k.dtype, float(abs(k_sealed[0] - x).max()) < 0.1
        (True, dtype('uint8'), True)
    """

    k: jax.Array
    v: jax.Array
    k_meta: jax.Array
    v_meta: jax.Array
    stage_k: jax.Array
    stage_v: jax.Array
    kv_format: Any = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def zeros(cls, kv_format, *, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
              head_dim: int, dtype) -> KiviPagedKVStorage:
        """``num_pages`` sealed pages and ``kv_format.staging_pages`` staging pages."""
        kv_format.check(num_kv_heads=num_kv_heads, head_dim=head_dim)
        kv_format.check_page_size(page_size)
        rows = (num_layers, num_pages, page_size, num_kv_heads)
        stage = (num_layers, kv_format.staging_pages, page_size, num_kv_heads, head_dim)

        def codes():                        # separate buffers: the step donates each one
            return jnp.zeros((*rows, kv_format.packed_dim(head_dim)), jnp.uint8)
        return cls(k=codes(), v=codes(),
                   k_meta=jnp.zeros((num_layers, num_pages, num_kv_heads, 2, head_dim), META_DTYPE),
                   v_meta=jnp.zeros((num_layers, num_pages, num_kv_heads, page_size, 1), jnp.uint32),
                   stage_k=jnp.zeros(stage, dtype), stage_v=jnp.zeros(stage, dtype), kv_format=kv_format)

    def head_specs(self, axis: str) -> KiviPagedKVStorage:
        heads, head_major = head_axis(5, 3, axis), head_axis(5, 2, axis)
        return dataclasses.replace(self, k=heads, v=heads, k_meta=head_major, v_meta=head_major,
                                   stage_k=heads, stage_v=heads)

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def num_sealed(self) -> int:
        """Sealed pages ``N``: ids below it are sealed, ids from it on are staging pages."""
        return self.k.shape[1]

    @property
    def num_pages(self) -> int:
        """The page-id space: sealed and staging pages."""
        return self.num_sealed + self.stage_k.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[3]

    @property
    def dtype(self):
        return self.stage_k.dtype

    @property
    def layout(self) -> KiviLayout:
        """How the kernels address ``arrays`` (``kvlab.kvcache.kivi_layout.KiviLayout``)."""
        return KiviLayout(num_sealed=self.num_sealed, num_staging=self.stage_k.shape[1],
                          page_size=self.page_size, num_kv_heads=self.num_kv_heads)

    @property
    def arrays(self) -> tuple[jax.Array, ...]:
        """(stage_k, stage_v, k, v, k_meta, v_meta), the order ``layout`` addresses."""
        return self.stage_k, self.stage_v, self.k, self.v, self.k_meta, self.v_meta

    def with_arrays(self, arrays) -> KiviPagedKVStorage:
        stage_k, stage_v, k, v, k_meta, v_meta = arrays
        return dataclasses.replace(self, stage_k=stage_k, stage_v=stage_v, k=k, v=v, k_meta=k_meta,
                                   v_meta=v_meta)

    def calibrate(self, layer, k_new, v_new, slots) -> KiviPagedKVStorage:
        """KIVI needs no calibration."""
        return self

    def write(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> KiviPagedKVStorage:
        """k_new, v_new: [T, Hkv, D] into flat ``slots`` [T] of staging pages (``page * page_size +
        offset``, page ``>= num_sealed``); negative slots (padding) and slots of sealed pages are
        dropped: a sealed page is never written in place."""
        page = slots // self.page_size - self.num_sealed
        staged = (slots >= 0) & (page >= 0)
        at = (layer, jnp.where(staged, page, self.stage_k.shape[1]),
              jnp.where(staged, slots % self.page_size, 0))
        k_new, v_new = k_new.astype(self.dtype), v_new.astype(self.dtype)
        return dataclasses.replace(self, stage_k=self.stage_k.at[at].set(k_new, mode="drop"),
                                   stage_v=self.stage_v.at[at].set(v_new, mode="drop"))

    def seal_pages(self, src: jax.Array, dst: jax.Array) -> KiviPagedKVStorage:
        """Quantize full staging pages ``src [n]`` (ids ``>= num_sealed``) into sealed pages ``dst
        [n]``, every layer; pairs with ``dst`` out of range (``>= num_sealed``) are padding."""
        r = jnp.clip(src - self.num_sealed, 0, self.stage_k.shape[1] - 1)
        return self._put_sealed(dst, self.stage_k[:, r], self.stage_v[:, r])

    def sealed_from(self, k: jax.Array, v: jax.Array) -> KiviPagedKVStorage:
        """Every sealed page encoded from full pages ``k, v [L, N, P, Hkv, D]`` (a benchmark's or
        a test's fill)."""
        return self._put_sealed(jnp.arange(self.num_sealed), k, v)

    def _put_sealed(self, dst, k, v) -> KiviPagedKVStorage:
        """Full pages ``k, v [L, n, P, Hkv, D]`` encoded into sealed pages ``dst [n]`` (ids out
        of range dropped)."""
        k_data, k_meta, v_data, v_meta = self.kv_format.encode_group(k, v)
        words = jnp.swapaxes(meta_word_rows(v_meta), -3, -2)             # [L, n, Hkv, P, 1]

        def put(arr, new):
            return arr.at[:, dst].set(new, mode="drop")
        return dataclasses.replace(self, k=put(self.k, k_data), v=put(self.v, v_data),
                                   k_meta=put(self.k_meta, k_meta), v_meta=put(self.v_meta, words))

    # ---- host-tier records: sealed pages' bytes as stored ----------------------------------------
    @property
    def page_record(self) -> jax.ShapeDtypeStruct:
        """One sealed page's record: uint8 ``[L, bytes per layer]`` (codes and scales of K and V)."""
        return page_record_of((self.k, self.v, self.k_meta, self.v_meta))

    def read_pages(self, pages: jax.Array) -> jax.Array:
        """Sealed ``pages`` (ids ``< num_sealed``: only sealed pages are reused, so only they go
        down a tier) as records ``[n, L, bytes per layer]``."""
        return pages_as_records((self.k, self.v, self.k_meta, self.v_meta), pages)

    def write_pages(self, pages: jax.Array, data: jax.Array) -> KiviPagedKVStorage:
        """Inverse of ``read_pages``, into sealed pages; out-of-range ids are dropped (padding)."""
        k, v, k_meta, v_meta = records_into_pages((self.k, self.v, self.k_meta, self.v_meta), pages, data)
        return dataclasses.replace(self, k=k, v=v, k_meta=k_meta, v_meta=v_meta)

    def gather_pages(self, layer, pages: jax.Array, whole: jax.Array | None = None):
        """K and V of ``pages`` (any int shape) in one layer, each ``[*pages.shape, P, Hkv, D]``:
        sealed pages decoded; staging pages in full precision, or round-tripped through the
        format where ``whole`` (bool, ``pages``' shape) says the reader sees the page whole."""
        fmt, n = self.kv_format, self.num_sealed
        s = jnp.clip(pages, 0, n - 1)
        k, v = fmt.decode_group(self.k[layer, s], self.k_meta[layer, s], self.v[layer, s],
                                token_meta(self.v_meta[layer, s]), self.dtype)
        r = jnp.clip(pages - n, 0, self.stage_k.shape[1] - 1)
        sk, sv = self.stage_k[layer, r], self.stage_v[layer, r]
        if whole is not None:
            qk, qv = fmt.round_trip(sk, sv, self.dtype)
            w = whole[..., None, None, None]
            sk, sv = jnp.where(w, qk, sk), jnp.where(w, qv, sv)
        sealed = (pages < n)[..., None, None, None]
        return jnp.where(sealed, k, sk), jnp.where(sealed, v, sv)
