"""The ``pallas_call`` launches of the Triton-lowered attention programs, and the jnp glue around
them (the split-K merge). Their per-step inputs (the prefill work list, the decode rows) come from
the step's plan (``plan.py``), computed once for all layers.

* ``paged_decode``: grid (sequence, KV head, split), decode programs only.
* ``ragged_prefill``: grid (query block, KV head), prefill programs only.
* ``mixed_step``: one launch whose grid holds the prefill programs first (heaviest first) and the
  decode programs after them, so the compute-bound prefill blocks and the bandwidth-bound decode
  programs share the GPU instead of running one after the other.

Each returns the step's whole output ``[T, Hq, D]``: the kernels write every row themselves
(prefill programs left idle by the plan zero the padding rows; the decode kernel writes into the
prefill's output in place when launched after it), so no memset, select or scatter of rows
surrounds a launch (only the split-K merge when a decode uses more than one split; a step of
decodes alone with one split needs no memset either).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.config import next_pow2
from kvlab.attention.pallas.plan import PrefillWork
from kvlab.attention.pallas.triton_attention import decode_program, prefill_program, zero_padding_program
from kvlab.attention.pallas.triton_tiles import NEG, Static


def decode_rows(group: int) -> int:
    """Rows of a decode program: the group's query heads, padded to a 16-row matrix tile."""
    return max(16, next_pow2(group))


def merge_splits(o, lse, valid):
    """Flash-decoding's second pass. o: [S, n, Hq, D] float32, lse: [S, n, Hq] (log2) -> [S, Hq, D]."""
    top = jnp.max(lse, axis=1, keepdims=True)
    w = jnp.where(lse > NEG / 2, jnp.exp2(lse - top), 0.0)
    denom = jnp.sum(w, axis=1)
    out = jnp.sum(w[..., None] * o, axis=1) / jnp.where(denom > 0, denom, 1.0)[..., None]
    return jnp.where(valid[:, None, None], out, 0.0)


def _params(config):
    return plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


def _partial_shapes(num_seqs_padded, num_splits, num_q_heads, head_dim):
    return [jax.ShapeDtypeStruct((num_seqs_padded, num_splits, num_q_heads, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((num_seqs_padded, num_splits, num_q_heads), jnp.float32)]


def _merge_into(out, o, lse, slot_rows):
    """Merge split partials and write each single-token sequence's row of ``out`` [T, Hq, D]
    (slot_rows: [S] from ``plan.decode_rows``, out of range for slots without a decode)."""
    valid = slot_rows < out.shape[0]
    return out.at[slot_rows].set(merge_splits(o, lse, valid).astype(out.dtype), mode="drop")


def paged_decode(q, kv_arrays, cu_q_lens, kv_lens, page_table, meta, slot_rows, *, st: Static, config,
                 num_splits: int, decode_only: bool, out=None):
    """Decode rows. q: [T, Hq, D]; meta: [2+] int32 (layer, num_seqs, ...); slot_rows: [S] int32,
    each slot's decode row (``plan.decode_rows``). Returns ``out`` ([T, Hq, D], updated in place;
    made by the launch if None) with the row of each single-token sequence replaced by its
    attention, other rows zeros if ``out`` is None. One split writes the rows from the kernel (all
    of them, zeros included, for a step of decodes alone: no memset); more go through
    ``merge_splits``."""
    num_seqs_padded, num_tokens = kv_lens.shape[0], q.shape[0]
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = num_q_heads // st.group
    direct = num_splits == 1
    fill = direct and out is None and decode_only
    if out is None and not fill:
        out = jnp.zeros_like(q)
    slots = max(num_seqs_padded, num_tokens) if fill else num_seqs_padded
    n_in = 5 + len(kv_arrays)

    def kernel(q_ref, cu_ref, kv_len_ref, pt_ref, meta_ref, *refs):
        outs = refs[st.n_kv + (direct and not fill):]   # after the cache arrays (and the aliased ``out``)
        decode_program(st, q_ref, cu_ref, kv_len_ref, pt_ref, refs[:st.n_kv], outs[0],
                       outs[1] if not direct else None,
                       seq=pl.program_id(0), kv_head=pl.program_id(1), split=pl.program_id(2),
                       layer=meta_ref[0], num_seqs=meta_ref[1], num_splits=num_splits,
                       rows=decode_rows(st.group), decode_only=decode_only, fill=fill)

    call = functools.partial(pl.pallas_call, kernel, grid=(slots, num_kv_heads, num_splits),
                             compiler_params=_params(config), interpret=st.interpret,
                             name="kvlab_paged_decode")
    args = (q, cu_q_lens, kv_lens, page_table, meta, *kv_arrays)
    out_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
    if fill:
        return call(out_shape=out_shape)(*args)
    if direct:
        return call(out_shape=out_shape, input_output_aliases={n_in: 0})(*args, out)
    o, lse = call(out_shape=_partial_shapes(num_seqs_padded, num_splits, num_q_heads, head_dim))(*args)
    return _merge_into(out, o, lse, slot_rows)


def _prefill_or_padding(st: Static, q_ref, cu_ref, kv_len_ref, pt_ref, kv, o_ref, *, prog, seq, q_first,
                        meta_ref, kv_head, block_q: int):
    """Program ``prog`` of the prefill plan: a query block (prog < meta_ref[2], the plan's block
    count), else a block of padding rows to zero (the plan always leaves enough idle programs)."""
    total = meta_ref[2]
    group_pad = next_pow2(st.group)

    @pl.when(prog < total)
    def _():
        prefill_program(st, q_ref, cu_ref, kv_len_ref, pt_ref, kv, o_ref, seq=seq, q_first=q_first,
                        kv_head=kv_head, layer=meta_ref[0], block_q=block_q, group_pad=group_pad)

    @pl.when(prog >= total)
    def _():
        zero_padding_program(st, o_ref, first_row=cu_ref[meta_ref[1]] + (prog - total) * block_q,
                             kv_head=kv_head, block_q=block_q, group_pad=group_pad)


def ragged_prefill(q, kv_arrays, cu_q_lens, kv_lens, page_table, meta, work: PrefillWork, *, st: Static,
                   config):
    """Rows of the sequences in ``work`` (built with ``config.block_q(st.group)``). q: [T, Hq, D];
    meta: [3] int32 (layer, num_seqs, work.total). Returns [T, Hq, D] in q's dtype; padding rows are
    zeros, rows of single-token sequences are left for the decode kernel to write."""
    num_q_heads = q.shape[1]
    block_q = config.block_q(st.group)
    num_programs = work.seq.shape[0]

    def kernel(q_ref, cu_ref, kv_len_ref, pt_ref, meta_ref, seq_ref, first_ref, *refs):
        prog = pl.program_id(0)
        _prefill_or_padding(st, q_ref, cu_ref, kv_len_ref, pt_ref, refs[:st.n_kv], refs[-1], prog=prog,
                            seq=seq_ref[prog], q_first=first_ref[prog], meta_ref=meta_ref,
                            kv_head=pl.program_id(1), block_q=block_q)

    return pl.pallas_call(
        kernel, grid=(num_programs, num_q_heads // st.group),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_params(config), interpret=st.interpret, name="kvlab_ragged_prefill",
    )(q, cu_q_lens, kv_lens, page_table, meta, work.seq, work.q_first, *kv_arrays)


def mixed_step(q, kv_arrays, cu_q_lens, kv_lens, page_table, meta, work: PrefillWork, slot_rows, *,
               st_prefill: Static, st_decode: Static, prefill_config, num_splits: int):
    """Prefill and decode programs in one launch; meta: [3] int32 (layer, num_seqs, work.total),
    work: the prefill work list, slot_rows: [S] the decode rows (both from the step's plan). Returns
    the step's attention [T, Hq, D] (padding rows zeros). With one split the decode programs write
    their rows themselves; with more, their partials are merged after the launch."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_seqs_padded = kv_lens.shape[0]
    block_q = prefill_config.block_q(st_prefill.group)
    num_prefill = work.seq.shape[0]
    run_decode = functools.partial(decode_program, st_decode, num_splits=num_splits,
                                   rows=decode_rows(st_decode.group), decode_only=False)
    direct = num_splits == 1

    def kernel(q_ref, cu_ref, kv_len_ref, pt_ref, meta_ref, seq_ref, first_ref, *refs):
        kv, outs = refs[:st_prefill.n_kv], refs[st_prefill.n_kv:]
        o_ref, od_ref, lse_ref = (outs[0], outs[0], None) if direct else outs
        prog, kv_head = pl.program_id(0), pl.program_id(1)

        @pl.when(prog < num_prefill)
        def _():
            p = jnp.minimum(prog, num_prefill - 1)
            _prefill_or_padding(st_prefill, q_ref, cu_ref, kv_len_ref, pt_ref, kv, o_ref, prog=prog,
                                seq=seq_ref[p], q_first=first_ref[p], meta_ref=meta_ref, kv_head=kv_head,
                                block_q=block_q)

        @pl.when(prog >= num_prefill)
        def _():
            d = jnp.maximum(prog - num_prefill, 0)
            run_decode(q_ref, cu_ref, kv_len_ref, pt_ref, kv, od_ref, lse_ref, seq=d // num_splits,
                       kv_head=kv_head, split=d % num_splits, layer=meta_ref[0], num_seqs=meta_ref[1])

    out_shapes = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    if not direct:
        out_shapes += _partial_shapes(num_seqs_padded, num_splits, num_q_heads, head_dim)
    res = pl.pallas_call(
        kernel, grid=(num_prefill + num_seqs_padded * num_splits, num_q_heads // st_prefill.group),
        out_shape=out_shapes, compiler_params=_params(prefill_config),
        interpret=st_prefill.interpret, name="kvlab_mixed_step",
    )(q, cu_q_lens, kv_lens, page_table, meta, work.seq, work.q_first, *kv_arrays)
    if direct:
        return res[0]
    out, o, lse = res
    return _merge_into(out, o, lse, slot_rows)


def static_for(config, storage, plan) -> Static:
    """What a program of a kernel with tiles ``config`` knows at trace time, for ``storage`` (its
    layout and KV format) and the step's ``plan`` (GQA group, options, interpret mode)."""
    return Static(layout=storage.layout, n_kv=len(storage.arrays), group=plan.group,
                  block_k=storage.kv_format.tile_tokens(config.block_k, storage.page_size),
                  page_size=storage.page_size, options=plan.options, interpret=plan.interpret,
                  kv_format=storage.kv_format)

