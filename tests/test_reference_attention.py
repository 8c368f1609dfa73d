"""The reference ragged paged attention against a naive dense per-sequence attention (NumPy,
float64), and against JAX's own ``jax.nn.dot_product_attention``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlab.attention import AttentionOptions, RaggedBatch, ragged_paged_attention


def naive_attention(q, k, v, positions, options):
    """One sequence: q [n, Hq, D] at absolute positions; k, v [kv_len, Hkv, D]. NumPy float64."""
    hq, hkv = q.shape[1], k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for i, p in enumerate(positions):
        for h in range(hq):
            kh = h // (hq // hkv)
            s = k[:, kh, :] @ q[i, h] * options.sm_scale
            if options.soft_cap is not None:
                s = options.soft_cap * np.tanh(s / options.soft_cap)
            j = np.arange(k.shape[0])
            vis = j <= p
            if options.sliding_window is not None:
                vis &= (p - j < options.sliding_window) | (j < options.num_sink_tokens)
            if not vis.any():
                continue
            s = np.where(vis, s, -np.inf)
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ v[:, kh, :]
    return out


@st.composite
def ragged_cases(draw):
    page_size = draw(st.sampled_from([1, 2, 4, 8]))
    hkv = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2, 3]))
    d = draw(st.sampled_from([4, 8]))
    n_seq = draw(st.integers(1, 4))
    kv_lens, q_lens = [], []
    for _ in range(n_seq):
        kv = draw(st.integers(0, 20))
        kv_lens.append(kv)
        q_lens.append(draw(st.integers(0, kv)))  # empty, decode (1), chunk or whole prompt
    # Few distinct static options and fixed bucket shapes keep compilations few.
    window = draw(st.sampled_from([None, 1, 3, 8]))
    sinks = draw(st.sampled_from([0, 2])) if window is not None else 0
    cap = draw(st.sampled_from([None, 5.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    extra_seqs = draw(st.integers(0, 2))       # padded sequence slots
    extra_tokens = draw(st.integers(0, 5))     # padded token rows
    return page_size, hkv, group, d, kv_lens, q_lens, window, sinks, cap, seed, extra_seqs, extra_tokens


def build_case(page_size, hkv, group, d, kv_lens, q_lens, seed, extra_seqs, extra_tokens, dtype=np.float32):
    rng = np.random.default_rng(seed)
    need = [-(-kv // page_size) for kv in kv_lens]
    num_pages = 96 // page_size + 4  # fixed per page size, enough for 4 x 20 tokens
    perm = rng.permutation(num_pages)  # pages scattered at random over the pool
    page_lists, off = [], 0
    for n in need:
        page_lists.append([int(p) for p in perm[off:off + n]])
        off += n
    k_seq = [rng.standard_normal((kv, hkv, d)) for kv in kv_lens]
    v_seq = [rng.standard_normal((kv, hkv, d)) for kv in kv_lens]
    k_pages = rng.standard_normal((1, num_pages, page_size, hkv, d))  # garbage in unused slots
    v_pages = rng.standard_normal((1, num_pages, page_size, hkv, d))
    for s, pages in enumerate(page_lists):
        for j in range(kv_lens[s]):
            k_pages[0, pages[j // page_size], j % page_size] = k_seq[s][j]
            v_pages[0, pages[j // page_size], j % page_size] = v_seq[s][j]
    q_tokens = [np.zeros(q, np.int32) for q in q_lens]
    batch = RaggedBatch.build(
        q_tokens=q_tokens, q_starts=[kv - q for kv, q in zip(kv_lens, q_lens)], page_lists=page_lists,
        page_size=page_size, token_bucket=max(sum(q_lens) + extra_tokens, 96),
        seq_bucket=max(len(kv_lens) + extra_seqs, 6), page_bucket=21)
    q = rng.standard_normal((batch.num_tokens, hkv * group, d))
    return (q.astype(dtype), k_pages.astype(dtype), v_pages.astype(dtype), batch, k_seq, v_seq)


_jitted_reference = jax.jit(ragged_paged_attention, static_argnums=(8,))


@settings(max_examples=60)
@given(ragged_cases())
def test_reference_matches_naive_dense(case):
    page_size, hkv, group, d, kv_lens, q_lens, window, sinks, cap, seed, xs, xt = case
    q, kp, vp, batch, k_seq, v_seq = build_case(page_size, hkv, group, d, kv_lens, q_lens, seed, xs, xt,
                                                dtype=np.float64)
    options = AttentionOptions(sm_scale=d ** -0.5, sliding_window=window, num_sink_tokens=sinks,
                               soft_cap=cap)
    with jax.enable_x64(True):
        out = np.asarray(_jitted_reference(
            jnp.asarray(q), jnp.asarray(kp), jnp.asarray(vp), 0, batch.cu_q_lens, batch.kv_lens,
            batch.page_table, batch.num_seqs, options))
    off = 0
    for s, (kv, ql) in enumerate(zip(kv_lens, q_lens)):
        want = naive_attention(q[off:off + ql], k_seq[s], v_seq[s], range(kv - ql, kv), options)
        np.testing.assert_allclose(out[off:off + ql], want, rtol=1e-10, atol=1e-10)
        off += ql
    assert np.all(out[off:] == 0), "padding rows must be zero"
    assert np.isfinite(out).all()


def test_reference_matches_jax_dot_product_attention():
    """A whole causal prefill of two sequences equals JAX's own attention op."""
    rng = np.random.default_rng(0)
    hkv, group, d, page_size = 2, 4, 16, 4
    kv_lens = [13, 7]
    q, kp, vp, batch, k_seq, v_seq = build_case(page_size, hkv, group, d, kv_lens, kv_lens, 3, 1, 2)
    options = AttentionOptions(sm_scale=d ** -0.5)
    out = ragged_paged_attention(jnp.asarray(q), jnp.asarray(kp), jnp.asarray(vp), 0, batch.cu_q_lens,
                                 batch.kv_lens, batch.page_table, batch.num_seqs, options)
    off = 0
    for s, n in enumerate(kv_lens):
        want = jax.nn.dot_product_attention(
            jnp.asarray(q[off:off + n])[None], jnp.asarray(k_seq[s], jnp.float32)[None],
            jnp.asarray(v_seq[s], jnp.float32)[None], is_causal=True, implementation="xla")[0]
        err = np.linalg.norm(np.asarray(out[off:off + n]) - np.asarray(want)) / np.linalg.norm(want)
        assert err < 1e-5, err
        off += n
    del rng


def test_slots_no_query_sees_take_no_part_even_when_not_finite():
    """A page's unwritten tail (stale bytes of an earlier sequence) holding NaN or inf changes
    nothing: masked keys get no weight and their values are not multiplied in (0 * NaN)."""
    hkv, group, d, page_size = 2, 2, 8, 4
    kv_lens = [6, 3]
    q, kp, vp, batch, _, _ = build_case(page_size, hkv, group, d, kv_lens, [2, 1], 5, 1, 2)
    options = AttentionOptions(sm_scale=d ** -0.5)

    def run(k, v):
        return np.asarray(ragged_paged_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 0,
                                                 batch.cu_q_lens, batch.kv_lens, batch.page_table,
                                                 batch.num_seqs, options))
    clean = run(kp, vp)
    pages = np.asarray(batch.page_table)
    kp2, vp2 = kp.copy(), vp.copy()
    for s, kv in enumerate(kv_lens):          # every slot past kv_len of each sequence's last page
        last = pages[s, (kv - 1) // page_size]
        kp2[0, last, kv % page_size or page_size:] = np.inf
        vp2[0, last, kv % page_size or page_size:] = np.nan
    assert np.isnan(vp2).any()
    np.testing.assert_array_equal(run(kp2, vp2), clean)


def test_bad_options_are_rejected():
    import pytest

    with pytest.raises(ValueError, match="sliding_window"):
        AttentionOptions(sm_scale=1.0, sliding_window=0)
    with pytest.raises(ValueError, match="soft_cap"):
        AttentionOptions(sm_scale=1.0, soft_cap=-1.0)


def test_the_model_plans_once_per_step_and_runs_per_layer():
    """``LlamaModel`` asks the backend for one plan before the layer scan and runs it in every layer
    (the scan traces its body once: one ``run``); the reference backend's plan/run gives the same
    logits as its one-shot call in every layer."""
    import dataclasses

    from kvlab.attention import ReferenceAttention, query_spec
    from kvlab.kvcache.storage import PagedKVStorage
    from kvlab.models import LlamaModel, ModelConfig

    calls = []

    @dataclasses.dataclass(frozen=True)
    class Counting(ReferenceAttention):
        def plan(self, *args):
            calls.append("plan")
            return super().plan(*args)

        def run(self, *args):
            calls.append("run")
            return super().run(*args)

    @dataclasses.dataclass(frozen=True)
    class OneShot(ReferenceAttention):            # a fresh plan inside every layer
        def run(self, q, storage, layer, plan):
            fresh = super().plan(plan.batch, storage, plan.options, query_spec(q))
            return super().run(q, storage, layer, fresh)

    config = ModelConfig.tiny()
    model = LlamaModel(config, seed=0)
    batch = jax.device_put(RaggedBatch.build(q_tokens=[[3, 4, 5], [6]], q_starts=[0, 7],
                                             page_lists=[[0], [1, 2]], page_size=4, token_bucket=16,
                                             seq_bucket=2, page_bucket=2))
    storage = PagedKVStorage.zeros(num_layers=config.num_layers, num_pages=3, page_size=4,
                                   num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
                                   dtype=jnp.float32)
    logits, _ = model(batch, storage, Counting())
    assert calls == ["plan", "run"]
    want, _ = model(batch, storage, OneShot())
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-6, atol=1e-6)
