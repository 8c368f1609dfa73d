# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---


# %% [markdown]
# # 5. Writing a Pallas kernel: paged decode
#
# Pallas is JAX's kernel language: a kernel is a Python function over *refs* (views of memory),
# run once per point of a *grid* of programs, lowered to Triton (or Mosaic GPU) on an NVIDIA GPU -
# or, with `interpret=True`, executed by plain JAX on any device, which is how this notebook and
# kvlab's CI test every kernel on a CPU.
#
# We write the simplest correct paged decode kernel, check it against kvlab's reference, look at
# what kvlab's production kernel does beyond it, and - on a GPU - time both against the memory
# bandwidth ceiling. Decode attention reads every cached key and value once and does little
# arithmetic with each, so its speed limit is bandwidth: the goal is bytes per second.

# %%
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

import kvlab
from kvlab.attention import AttentionOptions, RaggedBatch, ReferenceAttention
from kvlab.kvcache.storage import PagedKVStorage

QUICK = os.environ.get("KVLAB_NOTEBOOK_QUICK") == "1"
ON_GPU = jax.default_backend() == "gpu"
print("backend:", jax.default_backend(), "- kernels run", "compiled" if ON_GPU else "in interpret mode")

# %% [markdown]
# ## The kernel
#
# One program per (sequence, KV head). GQA: the `G` query heads that share a KV head are handled
# by the same program, so each page of K and V is read once for all of them. The program walks
# the sequence's pages through its page table and keeps a running ("online") softmax: the running
# maximum `m`, the running sum of exponentials `l` and the weighted sum of values `acc`, rescaled
# whenever the maximum grows. That is flash-decoding without the split of the context.

# %%
def paged_decode_kernel(kv_lens_ref, page_table_ref, q_ref, k_ref, v_ref, o_ref, *, group, page_size,
                        sm_scale):
    seq, head = pl.program_id(0), pl.program_id(1)
    kv_len = kv_lens_ref[seq]
    q = q_ref[seq, pl.ds(head * group, group), :].astype(jnp.float32) * sm_scale     # [G, D]

    def one_page(i, carry):
        m, denom, acc = carry
        page = page_table_ref[seq, i]
        k = k_ref[page, :, head, :].astype(jnp.float32)                               # [P, D]
        v = v_ref[page, :, head, :].astype(jnp.float32)
        s = jnp.sum(q[:, None, :] * k[None, :, :], axis=-1)                            # [G, P]
        pos = i * page_size + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(pos < kv_len, s, -1e30)                       # the last page may be partial
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp(s - m_new[:, None])
        scale = jnp.exp(m - m_new)
        denom = denom * scale + jnp.sum(p, axis=1)
        acc = acc * scale[:, None] + jnp.sum(p[:, :, None] * v[None, :, :], axis=1)   # [G, D]
        return m_new, denom, acc

    d = q.shape[-1]
    init = (jnp.full((group,), -1e30, jnp.float32), jnp.zeros((group,), jnp.float32),
            jnp.zeros((group, d), jnp.float32))
    num_pages = (kv_len + page_size - 1) // page_size
    _, denom, acc = jax.lax.fori_loop(0, num_pages, one_page, init)
    o_ref[seq, pl.ds(head * group, group), :] = (acc / jnp.maximum(denom, 1e-30)[:, None]).astype(o_ref.dtype)


def paged_decode(q, k_pages, v_pages, kv_lens, page_table, *, interpret):
    """q: [S, Hq, D]; k_pages, v_pages: [N, P, Hkv, D]; kv_lens: [S]; page_table: [S, max_pages]."""
    num_seqs, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    kernel = lambda *refs: paged_decode_kernel(                                  # noqa: E731
        *refs, group=num_q_heads // num_kv_heads, page_size=page_size, sm_scale=head_dim ** -0.5)
    return pl.pallas_call(kernel, grid=(num_seqs, num_kv_heads),
                          out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
                          interpret=interpret)(kv_lens, page_table, q, k_pages, v_pages)

# %% [markdown]
# No `BlockSpec`s here: every program sees whole arrays and picks its part with `program_id`,
# which keeps the example short. kvlab's kernels tile the same way but index token by token, so
# their KV tiles need not match the page size.
#
# ## A random paged batch, and the check against the reference
#
# Pages are handed out in a random order and the lengths are not multiples of the page size, so a
# wrong page lookup or a wrong mask cannot hide.

# %%
def random_batch(num_seqs, max_len, *, page_size=16, num_q_heads=8, num_kv_heads=2, head_dim=64,
                 dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    kv_lens = rng.integers(1, max_len + 1, num_seqs).astype(np.int32)
    max_pages = -(-max_len // page_size)
    num_pages = num_seqs * max_pages
    page_table = rng.permutation(num_pages).reshape(num_seqs, max_pages).astype(np.int32)
    k = jnp.asarray(rng.standard_normal((num_pages, page_size, num_kv_heads, head_dim)), dtype)
    v = jnp.asarray(rng.standard_normal((num_pages, page_size, num_kv_heads, head_dim)), dtype)
    q = jnp.asarray(rng.standard_normal((num_seqs, num_q_heads, head_dim)), dtype)
    return q, k, v, jnp.asarray(kv_lens), jnp.asarray(page_table)


def reference(q, k, v, kv_lens, page_table):
    """kvlab's plain-jnp reference, with a decode step's ragged layout (one query row each); full
    float32 matmuls (on a GPU, XLA's default would round their inputs to TF32)."""
    num_seqs, _, head_dim = q.shape
    with jax.default_matmul_precision("float32"):
        return kvlab.attention.reference.ragged_paged_attention(
            q, k[None], v[None], 0, jnp.arange(num_seqs + 1, dtype=jnp.int32), kv_lens, page_table,
            num_seqs, AttentionOptions(sm_scale=head_dim ** -0.5))


def rel_err(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


q, k, v, kv_lens, page_table = random_batch(4, 100)
ours = paged_decode(q, k, v, kv_lens, page_table, interpret=not ON_GPU)
err = rel_err(ours, reference(q, k, v, kv_lens, page_table))
print(f"kv_lens {np.asarray(kv_lens).tolist()}: relative error vs the reference {err:.1e}")
assert err < 1e-5

# %% [markdown]
# ## kvlab's production kernel, on the same batch
#
# `kvlab.PallasAttention` is the engine's GPU backend. Its decode kernel adds what makes the
# difference on a real GPU:
#
# * **split-K** (flash-decoding): a long context is cut into splits run by different programs,
#   each writing a partial output and its log-sum-exp, merged afterwards - so a batch of a few
#   long sequences still fills all 132 SMs; a heuristic picks the number of splits from the
#   batch size and the context length;
# * **tiles independent of the page size**, loaded with `pl.load` token by token through the page
#   table, and the group's query heads packed into rows so the score is one `pl.dot` (tensor cores);
# * `exp2` with the scale folded in, masks only on the tiles that need them, and sliding window,
#   attention sinks and soft cap as options.
#
# It takes the engine's step layout (`RaggedBatch`: the flattened tokens, offsets, page table) and
# its storage pytree; in interpret mode it runs on a CPU too.

# %%
def as_engine_step(q, k, v, kv_lens, page_table):
    """The same decode step as kvlab's engine lays it out."""
    storage = PagedKVStorage(k=k[None], v=v[None])
    num_seqs = q.shape[0]
    batch = RaggedBatch(
        tokens=jnp.zeros(num_seqs, jnp.int32), positions=kv_lens - 1, slots=jnp.full(num_seqs, -1, jnp.int32),
        cu_q_lens=jnp.arange(num_seqs + 1, dtype=jnp.int32), kv_lens=kv_lens, page_table=page_table,
        num_seqs=jnp.int32(num_seqs), logits_indices=jnp.arange(num_seqs, dtype=jnp.int32), decode_only=True)
    return storage, batch


storage, batch = as_engine_step(q, k, v, kv_lens, page_table)
opts = AttentionOptions(sm_scale=q.shape[-1] ** -0.5)
production = kvlab.PallasAttention(interpret=not ON_GPU)(q, storage, 0, batch, opts)
with jax.default_matmul_precision("float32"):
    expected = ReferenceAttention()(q, storage, 0, batch, opts)
print(f"production kernel vs the reference: {rel_err(production, expected):.1e}")

# %% [markdown]
# ## On a GPU: against the bandwidth ceiling
#
# The ceiling is what a plain device-to-device copy achieves (read + write bytes over time);
# decode should read the K and V of every sequence once. On a CPU this cell only says so. On an
# H100 (JAX 0.11.2, bf16, batch 64, context 4096, 32 query and 8 KV heads of 128) it printed, on
# 2026-11-22:
#
# | kernel | time | bandwidth | of copy (2.96 TB/s) |
# |---|---|---|---|
# | this notebook's kernel | 2.100 ms | 0.51 TB/s | 17% |
# | kvlab `PallasAttention` | 0.399 ms | 2.69 TB/s | 91% |
#
# The simple kernel runs 64 x 8 programs, each walking 256 pages one after the other with
# broadcast-and-sum arithmetic; the production kernel splits the context, loads larger tiles and
# uses tensor-core dots. `benchmarks/attention_kernels.py` measures it against JAX's own Pallas
# `paged_attention` (`docs/benchmarks.md`).

# %%
def seconds(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / reps


if ON_GPU:
    num_seqs, ctx = (16, 2048) if QUICK else (64, 4096)
    q, k, v, kv_lens, page_table = random_batch(num_seqs, ctx, num_q_heads=32, num_kv_heads=8,
                                                head_dim=128, dtype=jnp.bfloat16)
    kv_lens = jnp.full_like(kv_lens, ctx)
    kv_bytes = 2 * num_seqs * ctx * 8 * 128 * 2
    x = jnp.ones((kv_bytes // 4,), jnp.float32)
    copy_tbs = 2 * kv_bytes / seconds(jax.jit(lambda x: x + 1), x) / 1e12
    ours = jax.jit(lambda *a: paged_decode(*a, interpret=False))
    storage, batch = as_engine_step(q, k, v, kv_lens, page_table)
    prod = jax.jit(lambda q, s, b: kvlab.PallasAttention()(q, s, 0, b, opts))
    for name, t in [("this notebook's kernel", seconds(ours, q, k, v, kv_lens, page_table)),
                    ("kvlab PallasAttention", seconds(prod, q, storage, batch))]:
        tbs = kv_bytes / t / 1e12
        print(f"{name:24s} {1e3 * t:7.3f} ms  {tbs:5.2f} TB/s  "
              f"{tbs / copy_tbs:5.1%} of copy ({copy_tbs:.2f} TB/s)")
else:
    print("no GPU here: run this notebook on one to time the kernels")
