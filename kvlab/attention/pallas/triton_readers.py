"""How the tile loop of the Triton-lowered programs reads one KV tile, per family of KV formats.

The loop (``triton_attention``) owns the online softmax; a *tile reader* owns the loads and the
dequantization. The reader splits a range of tiles into spans, each with its own ``attend``
(``spans``: one loop each, so a reader can give the common case a loop without branches). For
tile ``t`` the loop asks ``address(t)`` one tile ahead (so the next tile's addresses are ready
when it starts) and then ``attend(t, address, carry, online)``: the reader
computes the tile's raw scores ``s = q . k`` ``[M, bk]`` (float32, before the softmax scale) and
a ``values_update(acc, alpha, p)`` that adds ``p . v`` to the rescaled accumulator, and hands both
to ``online``, which masks, exponentiates and returns the new carry. A reader may call ``online``
in several branches (``lax.cond``), which is how KIVI tells sealed pages from staging ones.

* ``RowTiles``: the per-token formats (plain, fp8, int8, int4, int2; the ``KVFormat`` contract):
  a tile of ``block_k`` tokens addressed token by token through the page table.
* ``KiviTiles`` (``triton_kivi``): KIVI pages, one page a tile.

``tile_reader`` picks the reader from the format's contract (``KVFormat`` or ``PageGroupFormat``); the
format's ``tile_tokens`` sets the tile size.
"""

from __future__ import annotations

import functools
from typing import Protocol

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.triton_kivi import KiviTiles
from kvlab.attention.pallas.triton_tiles import Static, as_code_dtype, dot, load_raw_tile, tile_codes_and_map
from kvlab.kvcache.formats.page_group import PageGroupFormat


class TileReader(Protocol):
    """One program's view of its KV tiles (built per program, at trace time)."""

    def spans(self, lo, hi, *, masked: bool):
        """``[(lo_i, hi_i, attend_i)]``: consecutive spans covering tiles ``lo <= t < hi`` (int32
        scalars), each read by its ``attend``; ``masked``: the tiles are an edge (a few tiles that
        the causal edge, a window or the end of the cache cut), read with masks."""
        ...

    def address(self, t):
        """What tile ``t``'s loads need (page ids), computed a tile ahead."""
        ...

    def attend(self, t, address, carry, online):
        """The carry after tile ``t``: ``online(carry, s [M, bk], values_update)``."""
        ...


def tile_reader(st: Static, kv_refs, pt_ref, q, *, layer, seq, head, row_pos, scales,
                fold_rows: bool) -> TileReader:
    """The reader of ``st.kv_format``'s tiles for one program: q in ``st.parts`` parts ``[M, D /
    parts]``, row_pos [M] each row's position; scales: the layer's (K, V) scales; ``fold_rows``:
    fold per-token maps into the products (the decode) instead of applying them per element."""
    args = dict(layer=layer, seq=seq, head=head, fold_rows=fold_rows)
    if isinstance(st.kv_format, PageGroupFormat):
        return KiviTiles(st, kv_refs, pt_ref, q, row_pos=row_pos, **args)
    return RowTiles(st, kv_refs, pt_ref, q, scales=scales, **args)


class RowTiles:
    """Per-token formats: tile ``t`` holds tokens ``t * bk ...`` whatever the pages; each token's
    data and metadata are read through ``st.layout`` (see ``tile_codes_and_map`` for the maps)."""

    def __init__(self, st: Static, kv_refs, pt_ref, q, *, layer, seq, head, scales, fold_rows: bool):
        self.st, self.kv_refs, self.pt_ref = st, kv_refs, pt_ref
        self.layer, self.seq, self.head, self.scales, self.fold_rows = layer, seq, head, scales, fold_rows
        self.code = st.kv_format.code_dtype(q[0].dtype)
        self.q = tuple(as_code_dtype(qj, self.code) for qj in q)
        self.q_sum = functools.reduce(jnp.add, [jnp.sum(qj.astype(jnp.float32), axis=1) for qj in self.q])

    def spans(self, lo, hi, *, masked: bool):
        """One span: every tile reads the same way."""
        return [(lo, hi, self.attend)]

    def address(self, t):
        """The page of each of tile ``t``'s tokens [bk]."""
        bk, max_pages = self.st.block_k, self.pt_ref.shape[1]
        key = t * bk + jnp.arange(bk, dtype=jnp.int32)
        cols = jnp.minimum(lax.div(key, self.st.page_size), max_pages - 1)
        return plgpu.load(self.pt_ref.at[self.seq, cols])

    def _raw(self, t, pages):
        """Tile t's K and V as stored: ((data, meta), (data, meta))."""
        st = self.st
        offsets = lax.rem(t * st.block_k + jnp.arange(st.block_k, dtype=jnp.int32), st.page_size)
        lay, at = st.layout, (self.layer, pages, offsets, self.head)
        meta_rows = (lay.k_meta_rows(*at), lay.v_meta_rows(*at)) if st.kv_format.meta_width else (None, None)
        return (load_raw_tile(st, self.kv_refs, 0, lay.k_rows(*at), meta_rows[0]),
                load_raw_tile(st, self.kv_refs, 1, lay.v_rows(*at), meta_rows[1]))

    def _codes(self, data, meta, which):
        return tile_codes_and_map(self.st.kv_format, data, meta, self.scales[which], self.code,
                                  fold_rows=self.fold_rows, fields=self.st.fields)

    def attend(self, t, pages, carry, online):
        (k_data, k_meta), (v_data, v_meta) = self._raw(t, pages)
        k, k_map = self._codes(k_data, k_meta, 0)
        s = functools.reduce(jnp.add, [dot(qj, kj, contract_b=1) for qj, kj in zip(self.q, k)])    # [M, bk]

        def values_update(acc, alpha, p):
            v, v_map = self._codes(v_data, v_meta, 1)
            return v_map.values_update(acc, alpha, p, v)
        return online(carry, k_map.scores(s, self.q_sum), values_update)
