"""KV cache write, Pallas with the Triton lowering: the step's new K/V rows scattered into their
pages, in place (the cache arrays are aliased to the outputs, so with the storage donated into the
step no copy of the cache is made).

Grid (token block, KV head): each program moves ``block_t`` rows of one head, ``[block_t, D]``,
from the new-token arrays to their slots; padding rows (slot < 0) and rows the layout places
outside the array (a KIVI cache's sealed pages) are masked out. A quantized format encodes the
rows in the kernel (its ``encode_tile``, the code the jnp reference runs) and stores each row's
data and metadata; the layer's scales are read from the storage, calibrated before the launch
where the format calibrates (``storage.calibrate``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kvlab.attention.pallas.layout import as_rows
from kvlab.attention.pallas.triton_tiles import cols, layer_scales, part_cols
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.formats.meta_words import pack_meta_word


def _write_kernel(k_new_ref, v_new_ref, slots_ref, meta_ref, *refs, layout, kv_format: KVFormat, n_kv: int,
                  block_t: int, page_size: int, interpret: bool):
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
    scales = layer_scales(layout, out_refs, layer, head)
    part_width = width // kv_format.tile_parts
    for which, new_ref in enumerate((k_new_ref, v_new_ref)):
        data_ref = (layout.k_ref, layout.v_ref)[which](out_refs)
        rows = (layout.k_rows, layout.v_rows)[which](layer, pages, offsets, head)
        ok = ok & (rows >= 0) & (rows < data_ref.shape[0])     # a layout may leave pages unwritable
        rows = jnp.where(ok, rows, past)
        parts = []
        for j in range(kv_format.tile_parts):
            tj, dj = part_cols(t, part_width, j, interpret)
            parts.append(plgpu.load(new_ref.at[tj, head, dj]))
        data, meta = kv_format.encode_tile(tuple(parts), scales[which])
        r, d = cols(rows, data_ref.shape[1], interpret)
        mask = jnp.broadcast_to(ok[:, None], data.shape)
        plgpu.store(data_ref.at[r, d], data.astype(data_ref.dtype), mask=mask)
        if meta:                        # one word a token, head-major within the page
            meta_rows = (layout.k_meta_rows, layout.v_meta_rows)[which](layer, pages, offsets, head)
            meta_ref = (layout.k_meta_ref, layout.v_meta_ref)[which](out_refs)
            plgpu.store(meta_ref.at[jnp.where(ok, meta_rows, meta_ref.shape[0] + t), 0], pack_meta_word(meta),
                        mask=ok)


def write_kv(kv_arrays, k_new, v_new, slots, layer, *, layout, page_size: int, kv_format: KVFormat = PLAIN,
             block_t: int = 16, num_warps: int = 4, interpret: bool = False):
    """Write k_new, v_new [T, Hkv, D] of one layer to flat slots [T] (``page * page_size + offset``,
    negative: padding, dropped), encoded in ``kv_format`` with the layer's scales as the arrays
    hold them. kv_arrays: the layout's cache arrays (any shape; the kernel sees their ``[rows,
    D]`` views). Returns them updated (aliased: in place when donated)."""
    num_tokens, num_kv_heads, _ = k_new.shape
    shapes = [a.shape for a in kv_arrays]
    kv_arrays = as_rows(kv_arrays)
    n_kv = len(kv_arrays)
    meta = jnp.reshape(jnp.asarray(layer, jnp.int32), (1,))
    kernel = functools.partial(_write_kernel, layout=layout, kv_format=kv_format, n_kv=n_kv, block_t=block_t,
                               page_size=page_size, interpret=interpret)
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
