"""Random ragged batches over random page tables, for comparing attention kernels with the
reference (shared by the interpret-mode tests on CPU and the GPU-marked tests).

Shapes are fixed per case family (token, sequence and page buckets), so one compilation per static
option set serves every drawn example; only the contents vary: sequence lengths (empty, single-token
decodes, prefill chunks with a cached prefix, lengths not multiples of the page size), padded
sequence slots, pages in random order, random K/V/Q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from kvlab.attention import AttentionOptions, RaggedBatch, ReferenceAttention
from kvlab.kvcache.blocked_storage import BlockedKVStorage
from kvlab.kvcache.storage import PagedKVStorage

OPTIONS = {
    "plain": dict(),
    "window": dict(sliding_window=13),
    "window+sinks": dict(sliding_window=9, num_sink_tokens=3),
    "softcap": dict(soft_cap=2.0),
}


@st.composite
def ragged_lengths(draw, *, max_seqs: int, max_tokens: int, max_kv: int, decode_only: bool = False):
    """(q_lens, kv_lens): sum(q_lens) <= max_tokens, q_len <= kv_len <= max_kv."""
    n = draw(st.integers(1, max_seqs))
    q_lens, kv_lens, budget = [], [], max_tokens
    for _ in range(n):
        if decode_only:
            q = 1
        else:
            q = draw(st.sampled_from([0, 1, 1, 2, 5, 11, 17]))
        q = min(q, budget)
        kv = draw(st.integers(max(q, 1 if decode_only else 0), max_kv))
        q_lens.append(q)
        kv_lens.append(kv)
        budget -= q
    return q_lens, kv_lens


def build_case(q_lens, kv_lens, *, seed: int, page_size: int, num_q_heads: int, num_kv_heads: int,
               head_dim: int, dtype, token_bucket: int, seq_bucket: int, page_bucket: int,
               blocked: bool = False, num_layers: int = 2):
    """(q [T, Hq, D], storage with random K/V, batch) for the given lengths; the pages of all
    sequences are a random permutation of the pool."""
    rng = np.random.default_rng(seed)
    n_pages = [-(-k // page_size) for k in kv_lens]
    pool = seq_bucket * page_bucket + 3
    perm = rng.permutation(pool)
    lists, at = [], 0
    for n in n_pages:
        lists.append(perm[at:at + n].tolist())
        at += n
    batch = RaggedBatch.build(q_tokens=[[1] * q for q in q_lens],
                              q_starts=[k - q for q, k in zip(q_lens, kv_lens)],
                              page_lists=lists, page_size=page_size, token_bucket=token_bucket,
                              seq_bucket=seq_bucket, page_bucket=page_bucket)
    kind = BlockedKVStorage if blocked else PagedKVStorage
    storage = kind.zeros(num_layers=num_layers, num_pages=pool, page_size=page_size,
                         num_kv_heads=num_kv_heads,
                         head_dim=head_dim, dtype=dtype)
    storage = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), dtype), storage)
    q = jnp.asarray(rng.standard_normal((token_bucket, num_q_heads, head_dim)), dtype)
    return q, storage, batch


def relative_error(out, q, storage, batch, options: AttentionOptions, layer: int = 1) -> float:
    """||out - ref|| / ||ref|| with the reference in float64 (float32 where x64 is off), full precision."""
    wide = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    up = jax.tree.map(lambda a: a.astype(wide), storage)
    with jax.default_matmul_precision("highest"):
        ref = ReferenceAttention()(q.astype(wide), up, layer, batch, options)
    num = jnp.linalg.norm((out.astype(wide) - ref).ravel())
    den = jnp.linalg.norm(ref.ravel())
    return float(num / den) if float(den) > 0 else float(num)
