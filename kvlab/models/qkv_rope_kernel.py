"""The Pallas kernel (Triton lowering) behind ``kvlab.models.qkv_rope.PallasQKVRope``: the fused
q/k/v projection's rows split into q, k and v, q and k rotated (RoPE, rotate-half convention, in
float32, rounded once), in one launch.

Grid (token block, KV head ``g``): each program reads ``block_t`` rows of g's q heads, k head and
v head from ``qkv`` and writes them to the three outputs; rows past the token count are masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def qkv_rope(qkv, cos, sin, *, num_heads: int, num_kv_heads: int, parts: int, block_t: int, num_warps: int,
             interpret: bool):
    """qkv: [T, (Hq + 2 Hkv) * D] in ``parts`` column blocks; cos, sin: [T, D/2] ->
    (q [T, Hq * D], k [T, Hkv * D], v [T, Hkv * D]), q and k rotated."""
    n_tok, width = qkv.shape
    head_dim = width // (num_heads + 2 * num_kv_heads)
    if n_tok == 0:
        return tuple(jnp.zeros((0, h * head_dim), qkv.dtype) for h in (num_heads, num_kv_heads, num_kv_heads))
    kernel = functools.partial(_kernel, num_heads=num_heads, num_kv_heads=num_kv_heads, parts=parts,
                               block_t=block_t, interpret=interpret)
    return pl.pallas_call(
        kernel,
        grid=(-(-n_tok // block_t), num_kv_heads),
        out_shape=[jax.ShapeDtypeStruct((n_tok, h * head_dim), qkv.dtype)
                   for h in (num_heads, num_kv_heads, num_kv_heads)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="kvlab_qkv_rope",
    )(qkv, cos.astype(jnp.float32), sin.astype(jnp.float32))


def fused_column(column, member: int, widths: tuple[int, int, int], parts: int):
    """Where column ``column`` of member ``member`` (0: q, 1: k, 2: v, in its own column order)
    sits in the fused projection: each member's columns split in ``parts`` equal chunks, block
    ``p`` holding every member's ``p``-th chunk in member order (``fused_projections.fuse``)."""
    chunk = widths[member] // parts
    block_width = sum(widths) // parts
    return (column // chunk) * block_width + sum(widths[:member]) // parts + column % chunk


def _kernel(qkv_ref, cos_ref, sin_ref, q_ref, k_ref, v_ref, *, num_heads: int, num_kv_heads: int,
            parts: int, block_t: int, interpret: bool):
    """Program (token block, KV head g): g's q heads and its k head rotated, its v head copied.
    Every half head is one run of columns in ``qkv`` (its chunks hold whole half heads)."""
    block, g = pl.program_id(0), pl.program_id(1)
    head_dim = q_ref.shape[1] // num_heads
    half, group = head_dim // 2, num_heads // num_kv_heads
    widths = (num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim)
    n_tok = qkv_ref.shape[0]
    t = block * block_t + jnp.arange(block_t, dtype=jnp.int32)
    ok = t < n_tok
    t_load = jnp.minimum(t, n_tok - 1)
    # Masked rows store past the end: never touched on the GPU, dropped by interpret mode's
    # scatter (where a duplicate of a real row would race with it).
    t_store = jnp.where(ok, t, n_tok + t)
    mask = jnp.broadcast_to(ok[:, None], (block_t, half))

    def at(ref, rows, start):
        if interpret:   # interpret mode's discharge rules do not mix array indexers with slices
            return ref.at[rows[:, None], start + jnp.arange(half, dtype=jnp.int32)[None, :]]
        return ref.at[rows, pl.ds(start, half)]

    def load(ref, start):
        return plgpu.load(at(ref, t_load, start), mask=mask, other=0)

    def store(ref, start, x):
        plgpu.store(at(ref, t_store, start), x.astype(ref.dtype), mask=mask)

    def halves(member, head):
        """The fused columns of ``head``'s two halves, and its first column in the member's output."""
        first = head * head_dim
        return (fused_column(first, member, widths, parts), fused_column(first + half, member, widths, parts),
                first)

    c, s = load(cos_ref, 0), load(sin_ref, 0)

    def rotate(member, head, out_ref):
        src1, src2, dst = halves(member, head)
        x1, x2 = load(qkv_ref, src1).astype(jnp.float32), load(qkv_ref, src2).astype(jnp.float32)
        store(out_ref, dst, x1 * c - x2 * s)
        store(out_ref, dst + half, x2 * c + x1 * s)

    for j in range(group):
        rotate(0, g * group + j, q_ref)
    rotate(1, g, k_ref)
    src1, src2, dst = halves(2, g)
    store(v_ref, dst, load(qkv_ref, src1))
    store(v_ref, dst + half, load(qkv_ref, src2))
