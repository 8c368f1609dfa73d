"""The Pallas kernels on quantized KV pages, in interpret mode on the CPU: decode, prefill and the
fused mixed step against the jnp reference reading the same pages (the reference dequantizes with
the format's own tile code, so only float arithmetic differs); the KV write kernel against the
storage's ``write`` (identical bytes); the limits the backend names."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import build_case, ragged_lengths

from kvlab.attention import AttentionOptions, ReferenceAttention
from kvlab.attention.pallas import DecodeConfig, MosaicPrefillConfig, PallasAttention, PrefillConfig
from kvlab.attention.pallas import device as device_module
from kvlab.kvcache.formats import (
    AsymmetricInt,
    CalibratedScales,
    Fp8E4M3,
    Fp8E5M2,
    Int4,
    Int8,
    PerHead,
    StaticScales,
)
from kvlab.kvcache.quantized_blocked import blocked_storage
from kvlab.kvcache.quantized_storage import paged_storage

DIMS = dict(num_q_heads=4, num_kv_heads=2, head_dim=64)
BUCKETS = dict(token_bucket=24, seq_bucket=4, page_bucket=8)
PAGE = 8
# (format, storage maker): each format once, the two layouts alternating
CASES = [(Int8(), paged_storage), (Int4(), blocked_storage), (AsymmetricInt(bits=2), paged_storage),
         (Fp8E4M3(scales=StaticScales(k=0.02, v=(0.01, 0.03))), blocked_storage)]
OPTIONS = AttentionOptions(sm_scale=0.125)


def quantized_case(fmt, make, q_lens, kv_lens, seed):
    """q, a storage of ``fmt`` whose every slot holds encoded random K/V, and the batch."""
    q, plain, batch = build_case(q_lens, kv_lens, seed=seed, page_size=PAGE, dtype=jnp.float32, **DIMS,
                                 **BUCKETS)
    store = make(fmt, num_layers=2, num_pages=plain.num_pages, page_size=PAGE, num_kv_heads=2, head_dim=64,
                 dtype=jnp.float32)
    rng = np.random.default_rng(seed)
    slots = jnp.arange(plain.num_pages * PAGE)
    for layer in range(2):
        k, v = (jnp.asarray(rng.standard_normal((slots.size, 2, 64)), jnp.float32) for _ in range(2))
        store = store.write(layer, k, v + 0.5, slots)
    return q, store, batch


@functools.cache
def kernels(fused: bool):
    be = PallasAttention(interpret=True, fuse_mixed=fused, decode=DecodeConfig(block_k=16),
                         prefill=PrefillConfig(block_m=16, block_k=16))
    return jax.jit(lambda q, store, batch: be(q, store, 1, batch, OPTIONS))


@functools.cache
def _reference():
    return jax.jit(lambda q, store, batch: ReferenceAttention()(q, store, 1, batch, OPTIONS))


def reference(q, store, batch):
    """The reference at full float32 matmul precision (no TF32 on a GPU)."""
    with jax.default_matmul_precision("highest"):
        return _reference()(q, store, batch)


@settings(max_examples=8, deadline=None)
@given(case=st.sampled_from(range(len(CASES))), data=st.data(), seed=st.integers(0, 2 ** 16))
def test_kernels_read_every_format_as_the_reference_does(case, data, seed):
    fmt, make = CASES[case]
    q_lens, kv_lens = data.draw(ragged_lengths(max_seqs=4, max_tokens=24, max_kv=8 * PAGE))
    q, store, batch = quantized_case(fmt, make, q_lens, kv_lens, seed)
    out = kernels(fused=case % 2 == 0)(q, store, batch)
    ref = reference(q, store, batch)
    assert not bool(jnp.isnan(out).any())
    err = float(jnp.linalg.norm(out - ref)) / max(float(jnp.linalg.norm(ref)), 1e-30)
    assert err < 1e-5, (fmt.name, q_lens, kv_lens, err)
    assert float(jnp.abs(out[sum(q_lens):]).max(initial=0.0)) == 0.0


@pytest.mark.parametrize("fmt,make", CASES + [(Fp8E5M2(scales=CalibratedScales(granularity=PerHead())),
                                               paged_storage)], ids=lambda x: getattr(x, "name", None))
def test_the_write_kernel_stores_what_write_stores(fmt, make):
    store = make(fmt, num_layers=2, num_pages=6, page_size=PAGE, num_kv_heads=2, head_dim=64,
                 dtype=jnp.float32)
    rng = np.random.default_rng(3)
    slots = jnp.asarray(rng.permutation(6 * PAGE)[:21].astype(np.int32)).at[4].set(-1)   # a padding row
    k, v = (jnp.asarray(rng.standard_normal((21, 2, 64)) * 3, jnp.float32) for _ in range(2))
    kernel = PallasAttention(interpret=True).write_kv(store, 1, k, v, slots)
    want = store.write(1, k, v, slots)
    for got, expected in zip(jax.tree.leaves(kernel), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert bool(jnp.any(kernel.layer_scales[1] != store.layer_scales[1])) == (fmt.name == "fp8-e5m2")


def test_the_backend_names_what_it_cannot_serve(monkeypatch):
    be = PallasAttention(interpret=True)
    shape = dict(num_q_heads=4, num_kv_heads=2, page_size=16, dtype=jnp.bfloat16)
    be.check(head_dim=64, kv_format=AsymmetricInt(bits=2), **shape)          # four parts of 16
    with pytest.raises(ValueError, match="int2 KV in 4 parts.*head_dim must be >= 64, got 32"):
        be.check(head_dim=32, kv_format=AsymmetricInt(bits=2), **shape)
    forced = PallasAttention(interpret=True, prefill=MosaicPrefillConfig())
    with pytest.raises(ValueError, match="reads plain KV, not int8.*PrefillConfig"):
        forced.prefill_kernel(dtype=jnp.bfloat16, head_dim=128, page_size=16, options=OPTIONS,
                              kv_format=Int8())

    class Ampere:            # fp8 conversions need compute capability 8.9
        platform, compute_capability, device_kind = "gpu", "8.0", "NVIDIA A100"

    monkeypatch.setattr(device_module.jax, "devices", lambda *a: [Ampere()])
    monkeypatch.setattr(device_module.jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match=r"fp8-e4m3fn KV format needs fp8.*8\.9.*has 8\.0.*int8 or int4"):
        PallasAttention().check(head_dim=64, kv_format=Fp8E4M3(), **shape)
    PallasAttention().check(head_dim=64, kv_format=Int4(), **shape)          # integer formats run there


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: CASES[i][0].name)
def test_compiled_kernels_read_and_write_every_format(case):
    """The same cases compiled for the GPU (float32, full-precision matmuls); the write kernel's
    codes may sit one step from ``write``'s where the GPU's float32 division rounds differently."""
    fmt, make = CASES[case]
    be = PallasAttention(fuse_mixed=case % 2 == 0, decode=DecodeConfig(block_k=16),
                         prefill=PrefillConfig(block_m=16, block_k=16))
    run = jax.jit(lambda q, store, batch: be(q, store, 1, batch, OPTIONS))
    for q_lens, kv_lens in (([1, 1, 1, 1], [64, 3, 17, 40]), ([1, 9, 0, 5], [30, 40, 7, 64])):
        q, store, batch = quantized_case(fmt, make, q_lens, kv_lens, seed=len(q_lens) + case)
        out, ref = run(q, store, batch), reference(q, store, batch)
        assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 1e-4, (fmt.name, q_lens)
    rng = np.random.default_rng(5)
    slots = jnp.asarray(rng.permutation(store.num_pages * PAGE)[:40].astype(np.int32)).at[4].set(-1)
    k, v = (jnp.asarray(rng.standard_normal((40, 2, 64)), jnp.float32) for _ in range(2))
    pages = jnp.arange(store.num_pages)
    got = jax.jit(lambda s: be.write_kv(s, 0, k, v, slots))(store).gather_pages(0, pages)
    want = store.write(0, k, v, slots).gather_pages(0, pages)
    for a, b in zip(got, want):                  # a code one step off on a few elements at most
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.02, fmt.name


def test_the_tuned_table_picks_tiles_per_kv_format():
    from kvlab.attention.pallas.tuned import DecodeShape, tuned_decode
    batch = dict(num_seqs=64, num_kv_heads=8, max_kv_len=4096, num_sms=132)
    blocks = {name: tuned_decode("NVIDIA H200", DecodeShape(kv_format=name, **batch)).block_k
              for name in ("plain", "fp8-e4m3fn", "int8", "int4")}
    assert blocks == {"plain": 16, "fp8-e4m3fn": 128, "int8": 128, "int4": 128}
    assert tuned_decode("NVIDIA H100", DecodeShape(kv_format="int8", **batch)).block_k == 64   # generic
