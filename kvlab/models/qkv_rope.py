"""How the attention's q, k and v come out of the fused q/k/v projection, with RoPE applied to q
and k: a small strategy the model calls once per layer.

The fused projection's output ``qkv [T, W]`` holds, in ``parts`` column blocks
(``kvlab.models.fused_projections``), each block's share of the q heads, then of the k heads, then
of the v heads. Both strategies return ``q [T, Hq, D]``, ``k [T, Hkv, D]`` and ``v [T, Hkv, D]``
with q and k rotated (the rotate-half convention of transformers, in float32, rounded once):

* ``JnpQKVRope``: column splits and ``apply_rope`` in jax.numpy. XLA makes three kernels of it on
  a GPU (q's rotation, k's rotation, v's copy out of the projection);
* ``PallasQKVRope``: one Pallas kernel (Triton lowering) that reads each row of ``qkv`` once and
  writes the three arrays, one program per block of tokens and KV head (its q heads, its k head
  and its v head).

``default_qkv_rope(...)`` takes the kernel on GPUs (for the layouts it supports) and jax.numpy
elsewhere (``interpret=True`` runs the kernel on a CPU, which is how the tests check it against
``JnpQKVRope``).

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab.models.qkv_rope import JnpQKVRope, PallasQKVRope
    >>> qkv = jnp.arange(2 * 16, dtype=jnp.float32).reshape(2, 16) / 32    # T=2, Hq=2, Hkv=1, D=4
    >>> cos, sin = jnp.ones((2, 2)), jnp.zeros((2, 2))                     # position 0: no rotation
    >>> q, k, v = PallasQKVRope(interpret=True)(qkv, cos, sin, num_heads=2, num_kv_heads=1, parts=1)
    >>> q.shape, k.shape, v.shape
    ((2, 2, 4), (2, 1, 4), (2, 1, 4))
    >>> bool(jnp.array_equal(v[:, 0], qkv[:, 12:]))
    True
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

from kvlab.models.fused_projections import split_columns


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [T, H, D]; cos, sin: [T, D/2] float32. Rotate-half convention (transformers)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


class QKVRope(Protocol):
    """``(qkv [T, W], cos [T, D/2], sin [T, D/2]) -> (q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D])``,
    ``W = (Hq + 2 Hkv) * D`` laid out in ``parts`` column blocks (each member's width divisible by
    ``parts``, as ``fused_projections.fuse`` requires); q and k rotated, v as it is."""

    def __call__(self, qkv: jax.Array, cos: jax.Array, sin: jax.Array, *, num_heads: int,
                 num_kv_heads: int, parts: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        ...


@dataclasses.dataclass(frozen=True)
class JnpQKVRope:
    """Column splits and ``apply_rope`` in jax.numpy (any device)."""

    def __call__(self, qkv, cos, sin, *, num_heads: int, num_kv_heads: int, parts: int):
        n_tok, head_dim = qkv.shape[0], qkv.shape[1] // (num_heads + 2 * num_kv_heads)
        q, k, v = split_columns(qkv, (num_heads * head_dim, num_kv_heads * head_dim,
                                      num_kv_heads * head_dim), parts)
        return (apply_rope(q.reshape(n_tok, num_heads, head_dim), cos, sin),
                apply_rope(k.reshape(n_tok, num_kv_heads, head_dim), cos, sin),
                v.reshape(n_tok, num_kv_heads, head_dim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PallasQKVRope:
    """One Pallas kernel (Triton lowering) for the split and the rotation. ``block_t``: tokens a
    program moves (a power of two); ``interpret``: Pallas interpret mode (any device, slow).

    Takes the layouts ``supports`` names and raises ValueError on others. The defaults were the
    fastest of 8/16/32 tokens and 2/4 warps on the lent H200 (Llama-3.2-1B
    shape, bf16, batch 256: 3.2 us a layer against 5.3 us for ``JnpQKVRope``'s three kernels;
    docs/benchmarks.md)."""

    block_t: int = 8
    num_warps: int = 4
    interpret: bool = False

    def __post_init__(self):
        if self.block_t < 1 or self.block_t & (self.block_t - 1):
            raise ValueError(f"block_t must be a power of two; got {self.block_t}")

    @staticmethod
    def supports(*, head_dim: int, num_heads: int, num_kv_heads: int, parts: int) -> bool:
        """Whether the kernel takes this layout: a power-of-two head dim, whole GQA groups, and
        column blocks that hold whole half heads (``2 * num_kv_heads`` divisible by ``parts``)."""
        return (head_dim >= 2 and not head_dim & (head_dim - 1) and not num_heads % num_kv_heads
                and not (2 * num_kv_heads) % parts)

    def __call__(self, qkv, cos, sin, *, num_heads: int, num_kv_heads: int, parts: int):
        n_tok, width = qkv.shape
        head_dim = width // (num_heads + 2 * num_kv_heads)
        if not self.supports(head_dim=head_dim, num_heads=num_heads, num_kv_heads=num_kv_heads, parts=parts):
            raise ValueError(f"PallasQKVRope needs a power-of-two head dim, whole GQA groups and column "
                             f"blocks of whole half heads (2 * num_kv_heads divisible by parts); got head "
                             f"dim {head_dim}, {num_heads} q heads, {num_kv_heads} KV heads, {parts} parts "
                             f"(use JnpQKVRope)")
        from kvlab.models.qkv_rope_kernel import qkv_rope  # the Pallas lowering loads on first use
        q, k, v = qkv_rope(qkv, cos, sin, num_heads=num_heads, num_kv_heads=num_kv_heads, parts=parts,
                           block_t=self.block_t, num_warps=self.num_warps, interpret=self.interpret)
        return (q.reshape(n_tok, num_heads, head_dim), k.reshape(n_tok, num_kv_heads, head_dim),
                v.reshape(n_tok, num_kv_heads, head_dim))


def default_qkv_rope(*, head_dim: int, num_heads: int, num_kv_heads: int, parts: int = 1) -> QKVRope:
    """``PallasQKVRope()`` on GPUs where it takes the layout (``PallasQKVRope.supports``),
    ``JnpQKVRope()`` otherwise."""
    layout = dict(head_dim=head_dim, num_heads=num_heads, num_kv_heads=num_kv_heads, parts=parts)
    if jax.default_backend() == "gpu" and PallasQKVRope.supports(**layout):
        return PallasQKVRope()
    return JnpQKVRope()
