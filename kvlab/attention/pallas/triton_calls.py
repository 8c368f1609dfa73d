"""The ``pallas_call`` launches of the Triton-lowered attention programs, and the jnp glue around
them: the prefill plan (program -> sequence and query block) and the split-K merge.

* ``paged_decode``: grid (sequence, KV head, split), decode programs only.
* ``ragged_prefill``: grid (query block, KV head), prefill programs only.
* ``mixed_step``: one launch whose grid holds the prefill programs first (heaviest first) and the
  decode programs after them, so the compute-bound prefill blocks and the bandwidth-bound decode
  programs share the GPU instead of running one after the other.

Each returns the step's whole output ``[T, Hq, D]``: the kernels write every row themselves
(prefill programs left idle by the plan zero the padding rows; the decode kernel writes into the
prefill's output in place when launched after it), so no memset, select or scatter of rows
surrounds a launch (only the split-K merge when a decode uses more than one split).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.config import next_pow2
from kvlab.attention.pallas.triton_attention import (
    NEG,
    Static,
    decode_program,
    prefill_program,
    zero_padding_program,
)


def decode_rows(group: int) -> int:
    return max(16, next_pow2(group))


def prefill_block_q(config, group: int) -> int:
    return max(1, config.block_m // next_pow2(group))


def plan_length(num_tokens: int, num_seqs_padded: int, block_q: int) -> int:
    """Programs a prefill plan needs at most: every query block of the token bucket, plus one
    partial block per sequence slot, which also leaves enough idle programs to zero the padding."""
    return -(-num_tokens // block_q) + num_seqs_padded


def prefill_plan(cu_q_lens, num_seqs, *, block_q: int, num_programs: int, include_decodes: bool):
    """Map program i to (sequence, first query token of its block), heaviest blocks (the last
    blocks of causal sequences) first. Returns (seq [G], q_first [G], num_active []) for
    G = ``num_programs``; single-token sequences are left out unless ``include_decodes``."""
    num_seqs_padded = cu_q_lens.shape[0] - 1
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
    take = (jnp.arange(num_seqs_padded) < num_seqs) & (q_lens > (0 if include_decodes else 1))
    blocks = jnp.where(take, -(-q_lens // block_q), 0)
    ends = jnp.cumsum(blocks)
    total = ends[-1]
    i = jnp.maximum(total - 1 - jnp.arange(num_programs, dtype=jnp.int32), 0)          # heaviest first
    seq = jnp.minimum(jnp.searchsorted(ends, i, side="right"), num_seqs_padded - 1).astype(jnp.int32)
    q_first = ((i - (ends[seq] - blocks[seq])) * block_q).astype(jnp.int32)
    return seq, q_first, total.astype(jnp.int32)


def merge_splits(o, lse, valid):
    """Flash-decoding's second pass. o: [S, n, Hq, D] float32, lse: [S, n, Hq] (log2) -> [S, Hq, D]."""
    top = jnp.max(lse, axis=1, keepdims=True)
    w = jnp.where(lse > NEG / 2, jnp.exp2(lse - top), 0.0)
    denom = jnp.sum(w, axis=1)
    out = jnp.sum(w[..., None] * o, axis=1) / jnp.where(denom > 0, denom, 1.0)[..., None]
    return jnp.where(valid[:, None, None], out, 0.0)


def _decode_valid(cu_q_lens, num_seqs, decode_only: bool):
    valid = jnp.arange(cu_q_lens.shape[0] - 1) < num_seqs
    if not decode_only:
        valid = valid & (cu_q_lens[1:] - cu_q_lens[:-1] == 1)
    return valid


def _params(config):
    return plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


def _partial_shapes(num_seqs_padded, num_splits, num_q_heads, head_dim):
    return [jax.ShapeDtypeStruct((num_seqs_padded, num_splits, num_q_heads, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((num_seqs_padded, num_splits, num_q_heads), jnp.float32)]


def _merge_into(out, o, lse, cu_q_lens, num_seqs, decode_only: bool):
    """Merge split partials and write each single-token sequence's row of ``out`` [T, Hq, D]."""
    valid = _decode_valid(cu_q_lens, num_seqs, decode_only)
    rows = jnp.where(valid, cu_q_lens[:-1], out.shape[0])
    return out.at[rows].set(merge_splits(o, lse, valid).astype(out.dtype), mode="drop")


def paged_decode(q, kv_arrays, cu_q_lens, kv_lens, page_table, meta, *, st: Static, config, num_splits: int,
                 decode_only: bool, out=None):
    """Decode rows. q: [T, Hq, D]; meta: [2] int32 (layer, num_seqs). Returns ``out`` ([T, Hq, D],
    zeros if None; updated in place) with the row of each single-token sequence replaced by its
    attention. One split writes the rows from the kernel; more go through ``merge_splits``."""
    num_seqs_padded = kv_lens.shape[0]
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = num_q_heads // st.group
    out = jnp.zeros_like(q) if out is None else out
    direct = num_splits == 1
    n_in = 5 + len(kv_arrays)

    def kernel(q_ref, cu_ref, kv_len_ref, pt_ref, meta_ref, *refs):
        outs = refs[st.n_kv + direct:]          # after the cache arrays (and the aliased ``out``)
        decode_program(st, q_ref, cu_ref, kv_len_ref, pt_ref, refs[:st.n_kv], outs[0],
                       outs[1] if not direct else None,
                       seq=pl.program_id(0), kv_head=pl.program_id(1), split=pl.program_id(2),
                       layer=meta_ref[0], num_seqs=meta_ref[1], num_splits=num_splits,
                       rows=decode_rows(st.group), decode_only=decode_only)

    call = functools.partial(pl.pallas_call, kernel, grid=(num_seqs_padded, num_kv_heads, num_splits),
                             compiler_params=_params(config), interpret=st.interpret,
                             name="kvlab_paged_decode")
    args = (q, cu_q_lens, kv_lens, page_table, meta, *kv_arrays)
    if direct:
        return call(out_shape=jax.ShapeDtypeStruct(out.shape, out.dtype),
                    input_output_aliases={n_in: 0})(*args, out)
    o, lse = call(out_shape=_partial_shapes(num_seqs_padded, num_splits, num_q_heads, head_dim))(*args)
    return _merge_into(out, o, lse, cu_q_lens, meta[1], decode_only)


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


def ragged_prefill(q, kv_arrays, cu_q_lens, kv_lens, page_table, meta, *, st: Static, config,
                   include_decodes: bool):
    """Rows of the sequences with more than one query token (all if ``include_decodes``).
    q: [T, Hq, D]; meta: [2] int32 (layer, num_seqs). Returns [T, Hq, D] in q's dtype; padding
    rows are zeros, rows of single-token sequences (without ``include_decodes``) are left for the
    decode kernel to write."""
    num_tokens, num_q_heads, _ = q.shape
    block_q = prefill_block_q(config, st.group)
    num_programs = plan_length(num_tokens, kv_lens.shape[0], block_q)
    seq, q_first, total = prefill_plan(cu_q_lens, meta[1], block_q=block_q, num_programs=num_programs,
                                       include_decodes=include_decodes)

    def kernel(q_ref, cu_ref, kv_len_ref, pt_ref, meta_ref, seq_ref, first_ref, *refs):
        prog = pl.program_id(0)
        _prefill_or_padding(st, q_ref, cu_ref, kv_len_ref, pt_ref, refs[:st.n_kv], refs[-1], prog=prog,
                            seq=seq_ref[prog], q_first=first_ref[prog], meta_ref=meta_ref,
                            kv_head=pl.program_id(1), block_q=block_q)

    return pl.pallas_call(
        kernel, grid=(num_programs, num_q_heads // st.group),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_params(config), interpret=st.interpret, name="kvlab_ragged_prefill",
    )(q, cu_q_lens, kv_lens, page_table, jnp.stack([meta[0], meta[1], total]), seq, q_first, *kv_arrays)


def mixed_step(q, kv_arrays, cu_q_lens, kv_lens, page_table, meta, *, st_prefill: Static, st_decode: Static,
               prefill_config, num_splits: int):
    """Prefill and decode programs in one launch. Returns the step's attention [T, Hq, D] (padding
    rows zeros). With one split the decode programs write their rows themselves; with more, their
    partials are merged after the launch."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_seqs_padded = kv_lens.shape[0]
    block_q = prefill_block_q(prefill_config, st_prefill.group)
    num_prefill = plan_length(num_tokens, num_seqs_padded, block_q)
    seq, q_first, total = prefill_plan(cu_q_lens, meta[1], block_q=block_q, num_programs=num_prefill,
                                       include_decodes=False)
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
    )(q, cu_q_lens, kv_lens, page_table, jnp.stack([meta[0], meta[1], total]), seq, q_first, *kv_arrays)
    if direct:
        return res[0]
    out, o, lse = res
    return _merge_into(out, o, lse, cu_q_lens, meta[1], False)


def static_for(config, *, layout, n_kv: int, group: int, page_size: int, options, interpret: bool) -> Static:
    return Static(layout=layout, n_kv=n_kv, group=group, block_k=config.block_k, page_size=page_size,
                  options=options, interpret=interpret)

