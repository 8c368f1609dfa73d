"""Ragged paged attention programs, Pallas with the Triton lowering.

Everything specific to the Triton lowering lives in this module, ``triton_calls`` (the
``pallas_call`` launches) and ``triton_kv_write``; the backend only calls the launchers, so a
Mosaic GPU (Hopper wgmma/TMA) kernel can later sit beside them behind the same backend.

One tile loop serves both program kinds: rows of a program are (query token, query head of one KV
group) pairs, so each KV tile is loaded once per group and serves all its heads (GQA packing);
scores accumulate in float32 with an online softmax in base 2; a KV tile of ``block_k`` tokens is
addressed token by token through the page table, so tiles are independent of the page size. Tiles
the causal mask or the sliding window hide entirely are never loaded, tiles they do not touch run
without mask arithmetic, and sink tiles get a loop of their own.

Quantized KV (``kvlab.kvcache.formats``) is read as the format stores it: a tile's bytes become
exact codes (``tile_codes``: an unpack, no conversion instruction for the integer formats) in the
format's ``code_dtype`` (float16 for a 16-bit model), and each row's affine map ``x = code * scale +
zero`` (``tile_affine``) is applied: a per-layer scale (fp8) is folded into the matrix products
(``s = scale * (q . code)``, ``(p * scale) . code``), a per-token map (the integer formats) costs
one multiply-add an element in the code dtype. The head dimension travels in the format's
``tile_parts`` contiguous parts (int4: two halves, ``q . k = q_lo . k_lo + q_hi . k_hi``), and no
dequantized copy of the cache is ever made.

* decode program (sequence, KV head, split): flash-decoding; a split covers a share of the
  sequence's own KV tiles and writes a normalized partial output plus its log-sum-exp.
* prefill program (query block, KV head): ``block_q`` query tokens of one sequence x the group's
  heads, mapped to (sequence, first token) by a per-step plan.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.triton_readers import TileReader, tile_reader
from kvlab.attention.pallas.triton_tiles import (
    LOG2E,
    NEG,
    Static,
    cols,
    exp2,
    layer_scales,
    load_parts,
    row_index,
    store_parts,
)


def _attend_tiles(st: Static, reader: TileReader, *, kv_len, row_pos, lo, hi, carry, masked: bool):
    """Online softmax over KV tiles ``lo <= t < hi`` read by ``reader`` (its loads and
    dequantization: ``triton_readers``); carry (acc (parts [M, D / parts]), m [M], l [M]); row_pos
    [M] each row's position. ``masked=False`` is for tiles every row sees whole."""
    o, bk = st.options, st.block_k

    def online(t, carry, s, values_update):
        acc, m_old, l_old = carry
        key = t * bk + jnp.arange(bk, dtype=jnp.int32)                                    # [bk]
        if o.soft_cap is not None:
            s = jnp.tanh(s * (o.sm_scale / o.soft_cap)) * (o.soft_cap * LOG2E)
        else:
            s = s * (o.sm_scale * LOG2E)
        if masked:
            visible = (key[None, :] < kv_len) & (key[None, :] <= row_pos[:, None])
            if o.sliding_window is not None:
                in_window = row_pos[:, None] - key[None, :] < o.sliding_window
                if o.num_sink_tokens:
                    in_window = in_window | (key[None, :] < o.num_sink_tokens)
                visible = visible & in_window
            s = jnp.where(visible, s, NEG)
        m_new = jnp.maximum(m_old, jnp.max(s, axis=1))
        p = exp2(s - m_new[:, None], st.interpret)
        if masked:
            p = jnp.where(visible, p, 0.0)
        alpha = exp2(m_old - m_new, st.interpret)
        return values_update(acc, alpha, p), m_new, l_old * alpha + jnp.sum(p, axis=1)

    for span_lo, span_hi, attend in reader.spans(lo, hi, masked=masked):
        def body(t, carry, attend=attend):
            *softmax, address = carry
            next_address = reader.address(t + 1)      # prefetched: the next tile's addresses are ready
            return (*attend(t, address, tuple(softmax), functools.partial(online, t)), next_address)

        *carry, _ = lax.fori_loop(span_lo, span_hi, body, (*carry, reader.address(span_lo)))
    return tuple(carry)


def _attend_positions(st: Static, q, kv_refs, pt_ref, *, layer, seq, head, kv_len, row_pos, scales,
                      fold_rows: bool, first_pos, last_pos, carry, tiles=None, sinks=True):
    """Attend rows whose positions lie in [first_pos, last_pos] (``row_pos`` [M] per row) to every
    key they may see: sink tiles (masked; only where ``sinks``, a traced bool), then the window's
    tiles, masked only where the causal edge, the window edge or the end of the cache cuts them.
    q: ``st.parts`` parts [M, D / parts]; scales: the layer's (K, V) scales; ``fold_rows``: fold
    per-token maps into the products (the decode). ``tiles(lo, hi) -> (lo, hi)`` narrows the
    window's tiles (a decode split). Returns the carry."""
    o, bk = st.options, st.block_k
    reader = tile_reader(st, kv_refs, pt_ref, q, layer=layer, seq=seq, head=head, row_pos=row_pos,
                         scales=scales, fold_rows=fold_rows)
    hi = jnp.minimum(pl.cdiv(kv_len, bk), lax.div(jnp.maximum(last_pos, -1) + bk, bk))
    full_hi = jnp.minimum(lax.div(kv_len, bk), lax.div(jnp.maximum(first_pos + 1, 0), bk))
    lo = full_lo = jnp.int32(0)
    if o.sliding_window is not None:
        lo = lax.div(jnp.maximum(first_pos - o.sliding_window + 1, 0), bk)
        full_lo = pl.cdiv(jnp.maximum(last_pos - o.sliding_window + 1, 0), bk)
    attend = functools.partial(_attend_tiles, st, reader, kv_len=kv_len, row_pos=row_pos)
    if o.sliding_window is not None and o.num_sink_tokens:
        sink_hi = jnp.where(sinks, jnp.minimum(pl.cdiv(jnp.int32(o.num_sink_tokens), bk), lo), 0)
        carry = attend(lo=0, hi=sink_hi, carry=carry, masked=True)
    if tiles is not None:
        lo, hi = tiles(lo, hi)
    hi = jnp.maximum(lo, hi)
    f_lo = jnp.clip(full_lo, lo, hi)
    f_hi = jnp.clip(full_hi, f_lo, hi)
    carry = attend(lo=lo, hi=f_lo, carry=carry, masked=True)
    carry = attend(lo=f_lo, hi=f_hi, carry=carry, masked=False)
    return attend(lo=f_hi, hi=hi, carry=carry, masked=True)


def _init_carry(st: Static, rows: int, head_dim: int):
    acc = tuple(jnp.zeros((rows, head_dim // st.parts), jnp.float32) for _ in range(st.parts))
    return acc, jnp.full((rows,), NEG, jnp.float32), jnp.zeros((rows,), jnp.float32)


def decode_program(st: Static, q_ref, cu_ref, kv_len_ref, pt_ref, kv_refs, o_ref, lse_ref, *, seq, kv_head,
                   split, layer, num_seqs, num_splits: int, rows: int, decode_only: bool, fill: bool = False):
    """The single query token of sequence ``seq``, heads of KV group ``kv_head``, split ``split``:
    writes o_ref[seq, split, heads] (normalized, float32) and lse_ref[seq, split, heads] (log2);
    with ``lse_ref=None`` (one split) the final rows instead: o_ref[token, heads] ([T, Hq, D], its
    dtype), nothing for an inactive slot. ``fill`` (one split, a step of decodes alone whose output
    the launch creates; the grid spans max(S, T) slots): program ``seq`` writes row ``seq`` whole,
    zeros when inactive, so no memset precedes the launch."""
    num_tokens, head_dim = q_ref.shape[0], q_ref.shape[2]
    group = st.group
    slot = jnp.minimum(seq, kv_len_ref.shape[0] - 1) if fill else seq      # slots past S: padding rows
    q_start = cu_ref[slot]
    active = seq < num_seqs
    if not decode_only:
        active = active & (cu_ref[seq + 1] - q_start == 1)
    kv_len = jnp.where(active, kv_len_ref[slot], 0)
    row, write = (seq, seq < num_tokens) if fill else (q_start, active)

    r = jnp.arange(rows, dtype=jnp.int32)
    row_ok = r < group
    q_heads = kv_head * group + jnp.minimum(r, group - 1)
    q = load_parts(st, q_ref, (jnp.minimum(q_start, num_tokens - 1),), q_heads, head_dim, mask=row_ok)

    def share(lo, hi):
        per = pl.cdiv(hi - lo, num_splits)
        a = lo + split * per
        return a, jnp.minimum(hi, a + per)

    pos = kv_len - 1
    acc, m, l_sum = _attend_positions(
        st, q, kv_refs, pt_ref, first_pos=pos, last_pos=pos, tiles=share if num_splits > 1 else None,
        sinks=split == 0, layer=layer, seq=slot, head=kv_head, kv_len=kv_len,
        row_pos=jnp.zeros((rows,), jnp.int32) + pos, scales=layer_scales(st.layout, kv_refs, layer, kv_head),
        carry=_init_carry(st, rows, head_dim), fold_rows=True)
    has = l_sum > 0
    out = tuple(a / jnp.where(has, l_sum, 1.0)[:, None] for a in acc)    # zeros where no key is visible
    # Masked-out rows store to distinct (possibly out-of-range) places: interpret mode applies a
    # masked store as a scatter, where duplicate indices would race with the real rows.
    heads = kv_head * group + r
    if lse_ref is None:
        t = jnp.zeros((rows,), jnp.int32) + row
        if st.interpret:
            t = t[:, None]
        store_parts(st, o_ref, (t,), heads, out, row_ok & write)
        return
    lse = jnp.where(has, m + jnp.log2(jnp.where(has, l_sum, 1.0)), NEG)
    store_parts(st, o_ref, (seq, split), heads, out, row_ok)
    plgpu.store(lse_ref.at[seq, split, heads], lse, mask=row_ok)


def prefill_program(st: Static, q_ref, cu_ref, kv_len_ref, pt_ref, kv_refs, o_ref, *, seq, q_first, kv_head,
                    layer, block_q: int, group_pad: int):
    """Query tokens ``q_first .. q_first + block_q`` of sequence ``seq`` x the heads of KV group
    ``kv_head``: writes their rows of o_ref [T, Hq, D]."""
    num_tokens, head_dim = q_ref.shape[0], q_ref.shape[2]
    group = st.group
    q_start = cu_ref[seq]
    q_len = cu_ref[seq + 1] - q_start
    kv_len = kv_len_ref[seq]

    rows = block_q * group_pad
    r = jnp.arange(rows, dtype=jnp.int32)
    tq = q_first + lax.div(r, group_pad)
    g = lax.rem(r, group_pad)
    row_ok = (tq < q_len) & (g < group)
    t = row_index(jnp.clip(q_start + tq, 0, num_tokens - 1), st.interpret)
    q = load_parts(st, q_ref, (t,), kv_head * group + jnp.minimum(g, group - 1), head_dim, mask=row_ok)

    first = kv_len - q_len + q_first
    last = kv_len - q_len + jnp.minimum(q_first + block_q, q_len) - 1
    acc, _, l_sum = _attend_positions(
        st, q, kv_refs, pt_ref, first_pos=first, last_pos=last, layer=layer, seq=seq, head=kv_head,
        kv_len=kv_len, row_pos=kv_len - q_len + tq, scales=layer_scales(st.layout, kv_refs, layer, kv_head),
        carry=_init_carry(st, rows, head_dim), fold_rows=False)
    out = tuple(a / jnp.where(l_sum > 0, l_sum, 1.0)[:, None] for a in acc)
    # distinct places for masked rows, as in the decode program
    store_parts(st, o_ref, (row_index(q_start + tq, st.interpret),), kv_head * group + g, out, row_ok)


def zero_padding_program(st: Static, o_ref, *, first_row, kv_head, block_q: int, group_pad: int):
    """Zeros into rows ``first_row .. first_row + block_q`` of o_ref [T, Hq, D] (padding tokens
    past the last sequence; rows past T are skipped), heads of KV group ``kv_head``: the prefill
    programs left idle by the plan do this, so no output needs zeroing before a launch."""
    num_tokens, head_dim = o_ref.shape[0], o_ref.shape[2]
    rows = block_q * group_pad
    r = jnp.arange(rows, dtype=jnp.int32)
    tq = first_row + lax.div(r, group_pad)
    g = lax.rem(r, group_pad)
    ok = (tq < num_tokens) & (g < st.group)
    t, d = cols(tq, head_dim, st.interpret)
    h, _ = cols(kv_head * st.group + g, head_dim, st.interpret)
    plgpu.store(o_ref.at[t, h, d], jnp.zeros((rows, head_dim), o_ref.dtype),
                mask=jnp.broadcast_to(ok[:, None], (rows, head_dim)))
