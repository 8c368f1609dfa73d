"""KV cache write, Pallas with the Triton lowering: the step's new K/V rows scattered into their
pages, in place (the cache arrays are aliased to the outputs, so with the storage donated into the
step no copy of the cache is made).

Grid (token block, KV head): each program moves ``block_t`` rows of one head, ``[block_t, D]``,
from the new-token arrays to their slots; padding rows (slot < 0) are masked out.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.layout import as_rows
from kvlab.attention.pallas.triton_attention import cols


def _write_kernel(k_new_ref, v_new_ref, slots_ref, meta_ref, *refs, layout, n_kv: int, block_t: int,
                  page_size: int, interpret: bool):
    out_refs = refs[n_kv:]                  # aliased to the inputs refs[:n_kv]
    block, head = pl.program_id(0), pl.program_id(1)
    num_tokens = k_new_ref.shape[0]
    layer = meta_ref[0]
    t = block * block_t + jnp.arange(block_t, dtype=jnp.int32)
    in_range = t < num_tokens
    t = jnp.minimum(t, num_tokens - 1)
    slot = plgpu.load(slots_ref.at[t], mask=in_range, other=-1)
    ok = in_range & (slot >= 0)
    width = k_new_ref.shape[2]
    # Masked rows point past the end: never touched on the GPU, dropped by interpret mode's scatter
    # (where a duplicate of a real slot would race with it).
    pages, offsets = lax.div(jnp.maximum(slot, 0), page_size), lax.rem(jnp.maximum(slot, 0), page_size)
    past = layout.k_ref(out_refs).shape[0] + t
    k_rows, d = cols(jnp.where(ok, layout.k_rows(layer, pages, offsets, head), past), width, interpret)
    v_rows, _ = cols(jnp.where(ok, layout.v_rows(layer, pages, offsets, head), past), width, interpret)
    t, _ = cols(t, width, interpret)
    k = plgpu.load(k_new_ref.at[t, head, d])
    v = plgpu.load(v_new_ref.at[t, head, d])
    mask = jnp.broadcast_to(ok[:, None], k.shape)
    k_dst = layout.k_ref(out_refs).at[k_rows, d]
    v_dst = layout.v_ref(out_refs).at[v_rows, d]
    plgpu.store(k_dst, k.astype(k_dst.dtype), mask=mask)
    plgpu.store(v_dst, v.astype(v_dst.dtype), mask=mask)


def write_kv(kv_arrays, k_new, v_new, slots, layer, *, layout, page_size: int, block_t: int = 16,
             num_warps: int = 4, interpret: bool = False):
    """Write k_new, v_new [T, Hkv, D] of one layer to flat slots [T] (``page * page_size + offset``,
    negative: padding, dropped). kv_arrays: the layout's cache arrays (any shape; the kernel sees
    their ``[rows, D]`` views). Returns them updated (aliased: in place when donated)."""
    num_tokens, num_kv_heads, _ = k_new.shape
    shapes = [a.shape for a in kv_arrays]
    kv_arrays = as_rows(kv_arrays)
    n_kv = len(kv_arrays)
    meta = jnp.reshape(jnp.asarray(layer, jnp.int32), (1,))
    kernel = functools.partial(_write_kernel, layout=layout, n_kv=n_kv, block_t=block_t, page_size=page_size,
                               interpret=interpret)
    out = pl.pallas_call(
        kernel,
        grid=(-(-num_tokens // block_t), num_kv_heads),
        out_shape=[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in kv_arrays],
        input_output_aliases={4 + i: i for i in range(n_kv)},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="kvlab_kv_write",
    )(k_new, v_new, slots, meta, *kv_arrays)
    return tuple(a.reshape(shape) for a, shape in zip(out, shapes))
