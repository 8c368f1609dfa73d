"""The Pallas kernels on KIVI pages, in interpret mode on the CPU: decode, prefill and the fused
mixed step against the jnp reference reading the same sealed and staging pages (a staging page
that a row sees whole is round-tripped in the kernel, as the reference does); the write kernel
against the storage's ``write``; an engine on the kernels against one on the reference; what the
kernels cannot read says so."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import ragged_lengths
from test_quantized_kernels import OPTIONS, reference

import kvlab
from kvlab.attention import AttentionOptions, RaggedBatch, ReferenceAttention
from kvlab.attention.pallas import DecodeConfig, PallasAttention, PrefillConfig
from kvlab.kvcache.formats import Kivi
from kvlab.kvcache.kivi_storage import KiviPagedKVStorage
from kvlab.models import LlamaModel, ModelConfig

G = 16                       # the page, the key group and the kernels' tile
SEALED, STAGING = 30, 26
FORMATS = [Kivi(bits=bits, group_size=G, staging_pages=STAGING) for bits in (2, 4)]


def kivi_case(fmt, q_lens, kv_lens, sealed_counts, seed):
    """q [24, 4, 64], a KIVI storage whose every page holds random K/V (sealed pages quantized from
    random full pages), and a batch whose sequence ``i`` reads ``sealed_counts[i]`` sealed pages
    and then staging pages, each list in random order."""
    rng = np.random.default_rng(seed)
    store = KiviPagedKVStorage.zeros(fmt, num_layers=2, num_pages=SEALED, page_size=G, num_kv_heads=2,
                                     head_dim=64, dtype=jnp.float32)
    staging_slots = jnp.arange(SEALED * G, store.num_pages * G)
    for layer in range(2):
        k, v = (jnp.asarray(rng.standard_normal((staging_slots.size, 2, 64)), jnp.float32) for _ in range(2))
        store = store.write(layer, k * 2.0, v + 0.5, staging_slots)
    store = store.seal_pages(jnp.arange(SEALED, SEALED + STAGING), jnp.arange(STAGING))     # 26 sealed
    store = store.seal_pages(jnp.arange(SEALED, SEALED + 4), jnp.arange(STAGING, SEALED))
    for layer in range(2):                           # fresh staging contents, unlike any sealed page
        k, v = (jnp.asarray(rng.standard_normal((staging_slots.size, 2, 64)), jnp.float32) for _ in range(2))
        store = store.write(layer, k, v - 0.5, staging_slots)
    sealed_ids, staging_ids = rng.permutation(SEALED).tolist(), (SEALED + rng.permutation(STAGING)).tolist()
    lists = []
    for kv, n_sealed in zip(kv_lens, sealed_counts):
        n = -(-kv // G)
        k = min(n_sealed, n)
        lists.append([sealed_ids.pop() for _ in range(k)] + [staging_ids.pop() for _ in range(n - k)])
    starts = [k - q for q, k in zip(q_lens, kv_lens)]
    batch = RaggedBatch.build(q_tokens=[[1] * q for q in q_lens], q_starts=starts, page_lists=lists,
                              page_size=G, token_bucket=24, seq_bucket=4, page_bucket=6)
    q = jnp.asarray(rng.standard_normal((24, 4, 64)), jnp.float32)
    return q, store, batch


@functools.cache
def kernels(fused: bool):
    be = PallasAttention(interpret=True, fuse_mixed=fused, decode=DecodeConfig(block_k=32),
                         prefill=PrefillConfig(block_m=16, block_k=64))      # KIVI's tiles are its pages
    return jax.jit(lambda q, store, batch: be(q, store, 1, batch, OPTIONS))


@settings(max_examples=6, deadline=None)
@given(bits=st.sampled_from([0, 1]), data=st.data(), seed=st.integers(0, 2 ** 16))
def test_kernels_read_sealed_and_staging_pages_as_the_reference_does(bits, data, seed):
    q_lens, kv_lens = data.draw(ragged_lengths(max_seqs=4, max_tokens=24, max_kv=6 * G))
    sealed = data.draw(st.lists(st.integers(0, 6), min_size=len(q_lens), max_size=len(q_lens)))
    q, store, batch = kivi_case(FORMATS[bits], q_lens, kv_lens, sealed, seed)
    out = kernels(fused=data.draw(st.booleans()))(q, store, batch)
    ref = reference(q, store, batch)
    assert not bool(jnp.isnan(out).any())
    err = float(jnp.linalg.norm(out - ref)) / max(float(jnp.linalg.norm(ref)), 1e-30)
    assert err < 1e-5, (q_lens, kv_lens, sealed, err)
    assert float(jnp.abs(out[sum(q_lens):]).max(initial=0.0)) == 0.0


def test_a_full_staging_page_reads_quantized_only_for_rows_that_see_it_whole():
    """One sequence of one staging page, all 16 positions queried: the last row reads the page
    round-tripped, the others in full precision, in the kernel as in the reference; a plain read of
    the same page differs from the kernel's on the last row only."""
    fmt = FORMATS[0]
    q, store, batch = kivi_case(fmt, [G], [G], [0], seed=7)
    out, ref = kernels(fused=False)(q, store, batch), reference(q, store, batch)
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 1e-5
    plain = kvlab.kvcache.storage.PagedKVStorage(k=store.stage_k, v=store.stage_v)
    batch_plain = RaggedBatch.build(q_tokens=[[1] * G], q_starts=[0], page_lists=[[int(batch.page_table[0, 0])
                                                                                  - SEALED]],
                                    page_size=G, token_bucket=24, seq_bucket=4, page_bucket=6)
    full = reference(q, plain, batch_plain)
    differs = jnp.abs(out[:G] - full[:G]).max(axis=(1, 2)) > 1e-4
    assert differs.tolist() == [False] * (G - 1) + [True]


def test_split_decodes_merge_to_the_reference():
    """Decodes alone, the KV tiles of each sequence split three ways (flash-decoding)."""
    be = PallasAttention(interpret=True, decode=DecodeConfig(num_splits=3))
    q, store, batch = kivi_case(FORMATS[1], [1, 1, 1], [6 * G, 5 * G - 3, G], [3, 0, 1], seed=11)
    assert bool(batch.decode_only)
    out = jax.jit(lambda q, s, b: be(q, s, 1, b, OPTIONS))(q, store, batch)
    ref = reference(q, store, batch)
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 1e-5


def test_an_outlier_key_channel_keeps_the_decode_finite():
    """bfloat16, one key channel at +-400 (its scale about 270) and queries of 300 there: the
    decode's folded query would pass float16's 65504 without its per-page normalization."""
    rng = np.random.default_rng(5)
    store = KiviPagedKVStorage.zeros(FORMATS[0], num_layers=2, num_pages=SEALED, page_size=G, num_kv_heads=2,
                                     head_dim=64, dtype=jnp.bfloat16)
    k, v = rng.standard_normal((2, 2, SEALED, G, 2, 64))
    k[..., 5] *= 400.0
    store = store.sealed_from(jnp.asarray(k, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16))
    batch = RaggedBatch.build(q_tokens=[[1]] * 3 + [[1] * 5], q_starts=[2 * G - 1, 3 * G - 1, G - 1, G - 5],
                              page_lists=[[3, 7], [1, 2, 9], [4], [5]], page_size=G, token_bucket=24,
                              seq_bucket=4, page_bucket=6)
    q = rng.standard_normal((24, 4, 64))
    q[..., 5] = 300.0
    q = jnp.asarray(q, jnp.bfloat16)
    opts = AttentionOptions(sm_scale=2e-4)         # scores of order 10: a softmax that rounding cannot flip
    with jax.default_matmul_precision("highest"):
        ref = ReferenceAttention()(q, store, 1, batch, opts).astype(jnp.float32)
    for fused in (False, True):
        be = PallasAttention(interpret=True, fuse_mixed=fused, prefill=PrefillConfig(block_m=16))
        out = jax.jit(lambda q, s, b, be=be: be(q, s, 1, b, opts))(q, store, batch).astype(jnp.float32)
        assert not bool(jnp.isnan(out).any())
        assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 2e-2


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_the_write_kernel_stores_staging_rows_as_write_does(fmt):
    store = KiviPagedKVStorage.zeros(fmt, num_layers=2, num_pages=SEALED, page_size=G, num_kv_heads=2,
                                     head_dim=64, dtype=jnp.float32)
    rng = np.random.default_rng(3)
    staged = SEALED * G + rng.permutation(STAGING * G)[:21]
    slots = jnp.asarray(staged, jnp.int32).at[4].set(-1).at[7].set(5 * G + 3)    # padding; a sealed page
    k, v = (jnp.asarray(rng.standard_normal((21, 2, 64)) * 3, jnp.float32) for _ in range(2))
    kernel = PallasAttention(interpret=True).write_kv(store, 1, k, v, slots)
    want = store.write(1, k, v, slots)
    for got, expected in zip(jax.tree.leaves(kernel), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert bool(kernel.stage_k.any()) and not bool(kernel.k.any())


def test_an_engine_on_the_kernels_gives_the_reference_engines_tokens():
    model = LlamaModel(ModelConfig.tiny(head_dim=64), seed=2)
    prompts = [list(range(3, 40)), list(range(50, 61)), [7] * 20]

    def serve(attention):
        cache = kvlab.PagedKVCache(num_pages=24, page_size=G, prefix_caching=True,
                                   kv_format=Kivi(bits=2, group_size=G, staging_pages=12))
        engine = kvlab.Engine(model, cache=cache, attention=attention, max_model_len=96,
                              scheduler=kvlab.ChunkedScheduler(max_num_seqs=3, max_num_batched_tokens=48,
                                                               max_chunk_tokens=24))
        outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=22, ignore_eos=True))
        assert cache.stats().pages_used == 0
        return [o.token_ids for o in outs]
    assert serve(PallasAttention(interpret=True)) == serve(ReferenceAttention())


@pytest.mark.parametrize("fmt,head_dim,match", [
    (Kivi(bits=2, group_size=8), 64, "a page a tile.*group_size \\(the page size\\) must be >= 16, got 8"),
    (Kivi(bits=2, group_size=16), 32, "kivi2 KV in 4 parts.*head_dim must be >= 64, got 32"),
])
def test_what_the_kernels_cannot_read_says_what_they_can(fmt, head_dim, match):
    with pytest.raises(ValueError, match=match):
        PallasAttention(interpret=True).check(num_q_heads=4, num_kv_heads=2, head_dim=head_dim,
                                              page_size=fmt.group_size, dtype=jnp.bfloat16, kv_format=fmt)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [0, 1], ids=["kivi2", "kivi4"])
def test_compiled_kernels_read_kivi_pages(bits):
    """The same cases compiled for the GPU: float32 at full matmul precision, and bfloat16. The
    staging pages a row sees whole are round-tripped in the kernel, where the compiler may fuse
    the quantizer's multiply and add: a code at a rounding boundary may land one step from the
    reference's (a few elements of 2-bit keys), hence 3e-3 in float32 (measured 1e-3 on the H200)."""
    cases = ((True, ([1, 1, 1, 1], [6 * G, 3, 2 * G, 5 * G - 1], [6, 0, 1, 2])),
             (False, ([1, 9, 0, 5], [2 * G + 1, 3 * G, 7, 4 * G], [1, 3, 0, 2])))
    for fused, (q_lens, kv_lens, sealed) in cases:
        be = PallasAttention(fuse_mixed=fused, prefill=PrefillConfig(block_m=16))
        run = jax.jit(lambda q, store, batch, be=be: be(q, store, 1, batch, OPTIONS))
        q, store, batch = kivi_case(FORMATS[bits], q_lens, kv_lens, sealed, seed=bits + len(q_lens))
        ref = reference(q, store, batch)
        with jax.default_matmul_precision("highest"):
            out = run(q, store, batch)
        assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 3e-3, (q_lens, fused)
        half = jax.tree.map(lambda a: a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a, (q, store))
        out16 = run(*half, batch).astype(jnp.float32)
        assert float(jnp.linalg.norm(out16 - ref) / jnp.linalg.norm(ref)) < 2e-2, (q_lens, fused)
