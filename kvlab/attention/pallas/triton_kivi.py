"""KIVI pages in the Triton-lowered tile loop (``kvlab.kvcache.formats.Kivi``): one page a tile.

A tile is one page of ``G`` tokens (``block_k == page_size == group_size``), sealed (page id
``< N``: 2- or 4-bit codes) or staging (full precision), and a ``lax.cond`` on the page id reads
it one way or the other:

* sealed: the keys' codes ``c`` with each channel's scale and zero point over the page,
  dequantized element by element (``k = c * scale + zero`` in float32, ``[D]`` each, rounded once
  to the model's dtype as the reference does), and the values' codes with each token's (as the
  integer formats: with ``fold_rows``, the decode, the per-token map folds into the products,
  ``RowMap``; otherwise it is applied to every element).
* staging: the page's K and V as written, and, for the rows that see the page whole (position
  ``>= (t + 1) * G - 1``, the format's read rule), the same page round-tripped through the format
  in the kernel (``Kivi.round_trip_key_tile``/``round_trip_value_tile``, the reference's code), so
  a page reads the same before and after it is sealed. Both are computed and chosen per row;
  only the last pages of a sequence are staging pages.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.config import next_pow2
from kvlab.attention.pallas.triton_tiles import (
    Static,
    cols,
    dot,
    part_cols,
    reciprocal_rn,
    tile_codes_and_map,
)
from kvlab.kvcache.formats.meta_words import unpack_meta_word


def _sum(xs):
    return functools.reduce(jnp.add, xs)


class KiviTiles:
    """One program's KIVI tiles (the ``TileReader`` contract of ``triton_readers``); q: parts
    ``[M, D / parts]`` in the model's dtype, row_pos [M] each row's position."""

    def __init__(self, st: Static, kv_refs, pt_ref, q, *, layer, seq, head, row_pos, fold_rows: bool):
        if st.block_k != st.page_size:
            raise ValueError(f"KIVI tiles are whole pages: block_k {st.block_k} != page_size {st.page_size}")
        self.st, self.refs, self.pt_ref = st, kv_refs, pt_ref
        self.layer, self.seq, self.head, self.row_pos, self.fold_rows = layer, seq, head, row_pos, fold_rows
        self.fmt = st.kv_format
        self.q = q
        self.code = self.fmt.code_dtype(q[0].dtype)
        self.first_staging = self._first_staging_tile()

    def _first_staging_tile(self):
        """The index of the sequence's first staging page in its page-table row (the row's length
        where none): one load of the row per program."""
        width = self.pt_ref.shape[1]
        cols = jnp.arange(next_pow2(width), dtype=jnp.int32)
        pages = plgpu.load(self.pt_ref.at[self.seq, jnp.minimum(cols, width - 1)])
        return jnp.min(jnp.where((cols < width) & (pages >= self.st.layout.num_sealed), cols, width))

    def spans(self, lo, hi, *, masked: bool):
        """The tiles before the sequence's first staging page (sealed, the common case: a loop
        with no branch, which the compiler can pipeline), then the rest (``attend``'s branch). A
        masked span (an edge of a few tiles) is one loop of ``attend``: less code to compile."""
        if masked:
            return [(lo, hi, self.attend)]
        mid = jnp.clip(self.first_staging, lo, jnp.maximum(lo, hi))
        return [(lo, mid, self.attend_sealed), (mid, hi, self.attend)]

    def attend_sealed(self, t, page, carry, online):
        """``attend`` for a tile known to be a sealed page."""
        return self._sealed(page, online, carry)

    def address(self, t):
        """The page id of tile ``t`` (an int32 scalar: the tile is that page)."""
        return self.pt_ref[self.seq, jnp.minimum(t, self.pt_ref.shape[1] - 1)]

    def attend(self, t, page, carry, online):
        """carry (acc (parts [M, D / parts]), m [M], l [M]) after page ``page``'s tile ``t``,
        through ``online(carry, s [M, G], values_update)``."""
        sealed = page < self.st.layout.num_sealed
        return lax.cond(sealed, functools.partial(self._sealed, page, online),
                        functools.partial(self._staged, t, page, online), carry)

    # ---- a sealed page ----------------------------------------------------------------------------
    def _sealed(self, page, online, carry):
        """``attend`` for a sealed page: codes [G, packed] of K and V, K's channel map, V's words."""
        st, lay, ints = self.st, self.st.layout, self.fmt.ints
        offsets = jnp.arange(st.block_k, dtype=jnp.int32)
        rows = lay.sealed_rows(self.layer, page, offsets, self.head)                   # [G]

        def codes(which):
            ref = lay.sealed_ref(self.refs, which)
            r, d = cols(rows, ref.shape[1], st.interpret)
            return plgpu.load(ref.at[r, d])                                            # [G, packed]
        k_data, v_data = codes(0), codes(1)
        s = self._sealed_scores(page, k_data)
        words = plgpu.load(lay.value_meta_ref(self.refs).at[lay.value_meta_rows(self.layer, page, offsets,
                                                                                   self.head), 0])
        v_map_meta = unpack_meta_word(words)                                            # [G] each

        def values_update(acc, alpha, p):
            v, v_map = tile_codes_and_map(ints, v_data, v_map_meta, jnp.float32(1.0), self.code,
                                          fold_rows=self.fold_rows, fields=self.st.fields)
            return v_map.values_update(acc, alpha, p, v)
        return online(carry, s, values_update)

    def _sealed_scores(self, page, k_data):
        """``q . k`` [M, G] of a sealed page's keys: each element ``c * scale + zero`` (its
        channel's, over the page) in float32, rounded once to the model's dtype as the reference
        decodes it, then one matrix product with the query."""
        st, lay = self.st, self.st.layout
        width = self.q[0].shape[1]
        meta, row = lay.key_meta_ref(self.refs), lay.key_meta_row(self.layer, page, self.head)
        scale, zero = ([plgpu.load(meta.at[row + i, pl.ds(j * width, width)]).astype(jnp.float32)
                        for j in range(st.parts)] for i in (0, 1))
        codes = self.fmt.ints.tile_codes(k_data, jnp.float32)
        keys = [(c * sj[None, :] + zj[None, :]).astype(self.q[0].dtype)
                for c, sj, zj in zip(codes, scale, zero)]
        return _sum([dot(qj, kj, contract_b=1) for qj, kj in zip(self.q, keys)])

    # ---- a staging page ---------------------------------------------------------------------------
    def _staged(self, t, page, online, carry):
        """``attend`` for a staging page: K, V [G, D / parts] per part as written, and round-tripped
        for the rows that see the page whole."""
        st, lay = self.st, self.st.layout
        offsets = jnp.arange(st.block_k, dtype=jnp.int32)
        rows = lay.k_rows(self.layer, page, offsets, self.head)
        width = self.q[0].shape[1]

        def load(ref):
            out = []
            for j in range(st.parts):
                r, d = part_cols(rows, width, j, st.interpret)
                out.append(plgpu.load(ref.at[r, d]))
            return tuple(out)
        dtype = self.q[0].dtype
        k, v = load(lay.k_ref(self.refs)), load(lay.v_ref(self.refs))
        exact = functools.partial(reciprocal_rn, interpret=st.interpret)     # the reference's codes
        k_whole = self.fmt.round_trip_key_tile(k, dtype, reciprocal=exact)
        v_whole = self.fmt.round_trip_value_tile(v, dtype, reciprocal=exact)
        whole = (self.row_pos >= (t + 1) * st.block_k - 1)[:, None]                    # [M, 1]

        def scores(keys):
            return _sum([dot(qj, kj.astype(dtype), contract_b=1) for qj, kj in zip(self.q, keys)])
        s = jnp.where(whole, scores(k_whole), scores(k))

        def values_update(acc, alpha, p):
            p_whole = jnp.where(whole, p, 0.0)
            return tuple(a * alpha[:, None] + dot((p - p_whole).astype(dtype), vj, contract_b=0)
                         + dot(p_whole.astype(dtype), wj.astype(dtype), contract_b=0)
                         for a, vj, wj in zip(acc, v, v_whole))
        return online(carry, s, values_update)

