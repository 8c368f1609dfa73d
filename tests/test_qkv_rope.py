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

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.models import LlamaModel, ModelConfig
from kvlab.models.fused_projections import fuse
from kvlab.models.qkv_rope import JnpQKVRope, PallasQKVRope, default_qkv_rope


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
    flat = {f"w{n}": a.reshape(tokens, heads[n] * head_dim) for n, a in x.items()}
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
    if (2 * kv_heads) % parts or (kv_heads * head_dim) % parts:
        parts = 1
    _, qkv, cos, sin = random_case(seed, tokens, kv_heads, group, head_dim, parts)
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    args = (jnp.asarray(qkv, dtype), jnp.asarray(cos), jnp.asarray(sin))
    dims = dict(num_heads=kv_heads * group, num_kv_heads=kv_heads, parts=parts)
    want = JnpQKVRope()(*args, **dims)
    got = PallasQKVRope(block_t=block_t, interpret=True)(*args, **dims)
    # Both round the same float32 products once; allow one bf16 step where a fused multiply-add
    # lands the other side of a rounding boundary. v is a copy: equal.
    tol = 8e-3 if bf16 else 1e-6
    for name, a, b in zip("qkv", got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_array_equal(np.asarray(got[2], np.float32), np.asarray(want[2], np.float32))


@pytest.mark.parametrize("kv_heads,group,parts", [(3, 2, 2), (1, 4, 2), (2, 1, 4), (4, 4, 2)])
def test_column_blocks_that_cut_heads_in_half_or_between_kv_heads(kv_heads, group, parts):
    """Fixed layouts of the tensor-parallel column blocks: a block boundary inside a head (1 KV
    head in 2 blocks), between the KV heads of one block (3 in 2), no grouping (group 1)."""
    _, qkv, cos, sin = random_case(7, 11, kv_heads, group, 8, parts)
    args = (jnp.asarray(qkv, jnp.bfloat16), jnp.asarray(cos), jnp.asarray(sin))
    dims = dict(num_heads=kv_heads * group, num_kv_heads=kv_heads, parts=parts)
    want = JnpQKVRope()(*args, **dims)
    got = PallasQKVRope(block_t=4, interpret=True)(*args, **dims)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_engine_with_the_kernel_gives_the_dense_greedy_tokens():
    """The serving path runs the model's ``qkv_rope``; ``dense_logits`` always the jax.numpy form."""
    config = ModelConfig.tiny()
    model = LlamaModel(config, seed=0, qkv_rope=PallasQKVRope(interpret=True))
    assert model.with_layer_loop(model.layer_loop).qkv_rope == PallasQKVRope(interpret=True)
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=32, page_size=4))
    prompts = [[5, 6, 7, 8, 9], list(range(30, 47)), [200, 3]]
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=5, ignore_eos=True))
    ref = DenseReferenceDecoder(LlamaModel(config, seed=0, qkv_rope=JnpQKVRope()))
    assert [o.token_ids for o in outs] == [ref.greedy(p, 5) for p in prompts]
    assert engine.cache.stats().pages_used == 0


def test_no_tokens_give_empty_arrays():
    q, k, v = PallasQKVRope(interpret=True)(jnp.zeros((0, 6 * 8)), jnp.zeros((0, 4)), jnp.zeros((0, 4)),
                                            num_heads=4, num_kv_heads=1, parts=1)
    assert (q.shape, k.shape, v.shape) == ((0, 4, 8), (0, 1, 8), (0, 1, 8))


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="power of two"):
        PallasQKVRope(block_t=12)
    qkv = jnp.zeros((2, 3 * 6))                   # head dim 6
    with pytest.raises(ValueError, match="power-of-two head dim"):
        PallasQKVRope(interpret=True)(qkv, jnp.ones((2, 3)), jnp.zeros((2, 3)), num_heads=1, num_kv_heads=1,
                                      parts=1)
    qkv = jnp.zeros((2, 3 * 8))                   # 1 KV head, 4 blocks: a block would hold a quarter head
    with pytest.raises(ValueError, match="2 \\* num_kv_heads divisible by parts"):
        PallasQKVRope(interpret=True)(qkv, jnp.ones((2, 4)), jnp.zeros((2, 4)), num_heads=1, num_kv_heads=1,
                                      parts=4)
    assert isinstance(default_qkv_rope(head_dim=96, num_heads=4, num_kv_heads=2), JnpQKVRope)  # any device


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
