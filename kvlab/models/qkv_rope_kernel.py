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


def _kernel(qkv_ref, cos_ref, sin_ref, q_ref, k_ref, v_ref, *, num_heads: int, num_kv_heads: int,
            parts: int, block_t: int, interpret: bool):
    """Program (token block, KV head g): g's q heads and its k head rotated, its v head copied."""
    block, g = pl.program_id(0), pl.program_id(1)
    head_dim = q_ref.shape[1] // num_heads
    half, group = head_dim // 2, num_heads // num_kv_heads
    n_tok = qkv_ref.shape[0]
    t = block * block_t + jnp.arange(block_t, dtype=jnp.int32)
    ok = t < n_tok
    t_load = jnp.minimum(t, n_tok - 1)
    # Masked rows store past the end: never touched on the GPU, dropped by interpret mode's
    # scatter (where a duplicate of a real row would race with it).
    t_store = jnp.where(ok, t, n_tok + t)
    # g's place in the column blocks: block p holds q heads, then k, then v of its share.
    kv_per_part = num_kv_heads // parts
    p, local = g // kv_per_part, g % kv_per_part
    base = p * (group + 2) * kv_per_part * head_dim
    q_src = base + local * group * head_dim
    k_src = base + (kv_per_part * group + local) * head_dim
    v_src = base + (kv_per_part * (group + 1) + local) * head_dim
    mask = jnp.broadcast_to(ok[:, None], (block_t, half))

    def at(ref, rows, start):
        if interpret:   # interpret mode's discharge rules do not mix array indexers with slices
            return ref.at[rows[:, None], start + jnp.arange(half, dtype=jnp.int32)[None, :]]
        return ref.at[rows, pl.ds(start, half)]

    def load(ref, start):
        return plgpu.load(at(ref, t_load, start), mask=mask, other=0)

    def store(ref, start, x):
        plgpu.store(at(ref, t_store, start), x.astype(ref.dtype), mask=mask)

    c, s = load(cos_ref, 0), load(sin_ref, 0)

    def rotate(src, out_ref, dst):
        x1, x2 = load(qkv_ref, src).astype(jnp.float32), load(qkv_ref, src + half).astype(jnp.float32)
        store(out_ref, dst, x1 * c - x2 * s)
        store(out_ref, dst + half, x2 * c + x1 * s)

    for j in range(group):
        rotate(q_src + j * head_dim, q_ref, (g * group + j) * head_dim)
    rotate(k_src, k_ref, g * head_dim)
    for h in (0, half):
        store(v_ref, g * head_dim + h, load(qkv_ref, v_src + h))
