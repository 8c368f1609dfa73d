"""The q/k/v split with RoPE (``kvlab.models.qkv_rope``): ``JnpQKVRope`` against a NumPy rotation
written head by head from transformers' ``rotate_half`` formula, and the Pallas kernel (interpret
mode here, compiled on the GPU) against ``JnpQKVRope``, over head counts, column blocks, token
counts that do not fill a block, and dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlab.models import LlamaModel, ModelConfig
from kvlab.models.fused_projections import fuse
from kvlab.models.qkv_rope import JnpQKVRope, PallasQKVRope


def numpy_reference(x_heads: dict[str, np.ndarray], cos: np.ndarray, sin: np.ndarray
                    ) -> dict[str, np.ndarray]:
    """transformers' ``q * cos + rotate_half(q) * sin`` on each ``[T, H, D]`` head array (v kept)."""
    cos_full = np.concatenate([cos, cos], axis=-1)[:, None, :]
    sin_full = np.concatenate([sin, sin], axis=-1)[:, None, :]

    def rotate_half(x):
        half = x.shape[-1] // 2
        return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)

    return {n: (x if n == "v" else x * cos_full + rotate_half(x) * sin_full) for n, x in x_heads.items()}


def random_case(seed: int, tokens: int, kv_heads: int, group: int, head_dim: int, parts: int):
    """Separate q/k/v activations ``[T, H, D]``, their fused-projection row layout in ``parts``
    column blocks, and the rotation's cos/sin at random positions."""
    rng = np.random.default_rng(seed)
    heads = {"q": kv_heads * group, "k": kv_heads, "v": kv_heads}
    x = {n: rng.standard_normal((tokens, h, head_dim)).astype(np.float32) for n, h in heads.items()}
    # The fused projection's columns: fuse() of identity-like weights puts each member's columns
    # where the model's fused matmul puts them.
    flat = {f"w{n}": a.reshape(tokens, -1) for n, a in x.items()}
    qkv = fuse(flat, parts)["w_qkv"]
    positions = rng.integers(0, 4096, tokens)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2) / head_dim))
    angles = positions[:, None] * inv_freq[None, :]
    return x, qkv, np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), tokens=st.integers(1, 20), kv_heads=st.sampled_from([1, 2, 4]),
       group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([4, 8, 16]),
       parts=st.sampled_from([1, 2, 4]))
def test_jnp_split_and_rotation_match_transformers_formula(seed, tokens, kv_heads, group, head_dim, parts):
    if kv_heads % parts:
        parts = 1
    x, qkv, cos, sin = random_case(seed, tokens, kv_heads, group, head_dim, parts)
    got = JnpQKVRope()(jnp.asarray(qkv), jnp.asarray(cos), jnp.asarray(sin), num_heads=kv_heads * group,
                       num_kv_heads=kv_heads, parts=parts)
    want = numpy_reference(x, cos, sin)
    for name, out in zip("qkv", got, strict=True):
        np.testing.assert_allclose(np.asarray(out), want[name], rtol=1e-5, atol=1e-5, err_msg=name)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), tokens=st.integers(1, 40), kv_heads=st.sampled_from([1, 2, 3, 4]),
       group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([4, 8, 64]),
       parts=st.sampled_from([1, 2, 3]), block_t=st.sampled_from([1, 2, 8, 16]), bf16=st.booleans())
def test_pallas_kernel_matches_jnp(seed, tokens, kv_heads, group, head_dim, parts, block_t, bf16):
    if kv_heads % parts:
        parts = 1
    _, qkv, cos, sin = random_case(seed, tokens, kv_heads, group, head_dim, parts)
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    args = (jnp.asarray(qkv, dtype), jnp.asarray(cos), jnp.asarray(sin))
    dims = dict(num_heads=kv_heads * group, num_kv_heads=kv_heads, parts=parts)
    want = JnpQKVRope()(*args, **dims)
    got = PallasQKVRope(block_t=block_t, interpret=True)(*args, **dims)
    tol = 1e-2 if bf16 else 1e-6
    for name, a, b in zip("qkv", got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol,
                                   err_msg=name)


def test_model_with_the_kernel_gives_the_same_logits():
    tokens = jnp.array([1, 5, 7, 9, 11, 3, 2])
    plain = LlamaModel(ModelConfig.tiny(), seed=0, qkv_rope=JnpQKVRope())
    kernel = LlamaModel(ModelConfig.tiny(), seed=0, qkv_rope=PallasQKVRope(interpret=True))
    np.testing.assert_allclose(np.asarray(kernel.dense_logits(tokens)),
                               np.asarray(plain.dense_logits(tokens)), rtol=1e-5, atol=1e-5)
    assert kernel.with_layer_loop(kernel.layer_loop).qkv_rope == PallasQKVRope(interpret=True)


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="power of two"):
        PallasQKVRope(block_t=12)
    qkv = jnp.zeros((2, 3 * 6))                   # head dim 6
    with pytest.raises(ValueError, match="power-of-two head dim"):
        PallasQKVRope(interpret=True)(qkv, jnp.ones((2, 3)), jnp.zeros((2, 3)), num_heads=1, num_kv_heads=1,
                                      parts=1)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,head_dim,parts", [(1, 64, 1), (256, 64, 1), (300, 128, 2), (8192, 64, 1)])
def test_compiled_kernel_matches_jnp_on_the_gpu(tokens, head_dim, parts):
    _, qkv, cos, sin = random_case(tokens, tokens, 8, 4, head_dim, parts)
    args = (jnp.asarray(qkv, jnp.bfloat16), jnp.asarray(cos), jnp.asarray(sin))
    dims = dict(num_heads=32, num_kv_heads=8, parts=parts)
    want = jax.jit(lambda *a: JnpQKVRope()(*a, **dims))(*args)
    got = jax.jit(lambda *a: PallasQKVRope()(*a, **dims))(*args)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2, atol=1e-2)
