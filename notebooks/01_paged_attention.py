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
# # 1. Paged attention from scratch
#
# A serving engine keeps every running request's keys and values (its *KV cache*) in GPU memory.
# How that memory is laid out decides how many requests fit at once, and so the throughput. This
# notebook
#
# 1. measures how much memory a **contiguous** layout wastes on a ShareGPT-like trace;
# 2. builds **pages and page tables** by hand in NumPy and computes attention through them;
# 3. checks the hand-made version against kvlab's **reference kernel** (and that one against JAX's
#    own `dot_product_attention`);
# 4. does the same with kvlab's `PagedKVCache`, the part an engine uses.
#
# Everything runs on a CPU in seconds. `QUICK` (set by the test suite) only shrinks the trace.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import kvlab
from kvlab.bench import simulate
from kvlab.schedulers import ContinuousScheduler
from kvlab.workloads import sharegpt_like

QUICK = os.environ.get("KVLAB_NOTEBOOK_QUICK") == "1"
NUM_REQUESTS = 200 if QUICK else 1000

# %% [markdown]
# ## 1. What a contiguous KV cache wastes
#
# Before vLLM, engines reserved one contiguous region per request, sized for the longest sequence
# the model allows (here 2048 tokens), because the output length is unknown when a request starts.
# The region holds the prompt plus the tokens generated so far; the rest is *reserved* for tokens
# that may never come. The ShareGPT-like trace below (vLLM's benchmark filter: prompt <= 1024,
# total <= 2048) has, on average, a few hundred tokens per request.

# %%
requests = sharegpt_like(NUM_REQUESTS, seed=1)
lengths = np.array([len(r.prompt_token_ids) + r.max_tokens for r in requests])
print(f"{len(requests)} requests; final length: mean {lengths.mean():.0f}, "
      f"median {np.median(lengths):.0f}, max {lengths.max()} tokens")
print(f"a 2048-token slot per request holds on average {lengths.mean() / 2048:.1%} of real tokens "
      "once the request has ended - and less while it is still generating")

# %% [markdown]
# That back-of-the-envelope figure ignores time: a request's tokens grow from its prompt to its
# final length. kvlab's caches keep a time-averaged ledger of every slot (the PagedAttention
# paper's categories: *stored* tokens, *reserved* slots, *internal* fragmentation in a sequence's
# last page, *external* fragmentation between regions). `simulate` drives a scheduler and a cache
# with no model, so we can compare layouts on the same trace and the same memory.

# %%
MEMORY_TOKENS = 65536
caches = {
    "contiguous (2048 per request)": kvlab.ContiguousKVCache.for_tokens(MEMORY_TOKENS, max_seq_len=2048),
    "paged, 16-token pages": kvlab.PagedKVCache(num_pages=MEMORY_TOKENS // 16, page_size=16),
    "paged, 128-token pages": kvlab.PagedKVCache(num_pages=MEMORY_TOKENS // 128, page_size=128),
}
breakdown = {}
for name, cache in caches.items():
    result = simulate(ContinuousScheduler(max_num_seqs=256, max_num_batched_tokens=4096), cache, requests)
    breakdown[name] = result.stats.memory
    print(f"{name:30s} waste {result.stats.memory.waste:6.1%}   steps {result.steps:5d}   "
          f"preemptions {result.preemptions}")

# %%
fig, ax = plt.subplots(figsize=(8, 2.8))
parts = ["stored", "reserved", "internal", "external"]
for i, m in enumerate(breakdown.values()):
    held = sum(getattr(m, p) for p in parts)
    left = 0.0
    for p, color in zip(parts, ["tab:green", "tab:orange", "tab:red", "tab:purple"]):
        share = getattr(m, p) / held
        ax.barh(i, share, left=left, color=color, label=p if i == 0 else None)
        left += share
ax.set_yticks(range(len(breakdown)), list(breakdown))
ax.set_xlabel("share of the KV memory held for requests (time-averaged)")
ax.legend(loc="lower right", ncols=4, fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The paper reports 60-80% waste for contiguous reservation and under 4% for paging; the
# contiguous layout also finishes in far more steps, because fewer requests fit at once. With
# paging the only waste is the unfilled tail of each sequence's last page, so larger pages waste
# a little more.
#
# ## 2. Pages and page tables, by hand
#
# A paged cache cuts the memory into fixed-size **pages** from one shared pool. A sequence owns a
# list of pages (its **page table**) in any order; token `j` lives at
# `pages[page_table[j // page_size], j % page_size]`. Here is the whole idea in NumPy: three
# sequences of different lengths, their pages scattered over a pool of 16.

# %%
rng = np.random.default_rng(0)
PAGE, POOL, HKV, HQ, D = 4, 16, 2, 4, 8             # GQA: 2 query heads share each KV head
seq_lens = [7, 1, 10]
free = rng.permutation(POOL).tolist()                # a free list in no particular order
page_tables = [[free.pop() for _ in range(-(-n // PAGE))] for n in seq_lens]
print("page tables:", page_tables)

k_pool = np.zeros((POOL, PAGE, HKV, D), np.float32)
v_pool = np.zeros_like(k_pool)
keys = [rng.standard_normal((n, HKV, D)).astype(np.float32) for n in seq_lens]
values = [rng.standard_normal((n, HKV, D)).astype(np.float32) for n in seq_lens]
for table, k, v in zip(page_tables, keys, values):
    for j in range(len(k)):
        page, offset = table[j // PAGE], j % PAGE
        k_pool[page, offset], v_pool[page, offset] = k[j], v[j]

# %% [markdown]
# Decode attention for one new query token per sequence: gather the sequence's keys back through
# its page table, then ordinary softmax attention, each query head reading its group's KV head.

# %%
def paged_decode_numpy(q, k_pool, v_pool, page_tables, seq_lens):
    """q: [S, Hq, D] one query per sequence -> [S, Hq, D]."""
    out = np.zeros_like(q)
    group = q.shape[1] // k_pool.shape[2]
    for s, (table, n) in enumerate(zip(page_tables, seq_lens)):
        k = k_pool[table].reshape(-1, HKV, D)[:n]     # [n, Hkv, D]: the pages, in table order
        v = v_pool[table].reshape(-1, HKV, D)[:n]
        for h in range(q.shape[1]):
            scores = k[:, h // group] @ q[s, h] / np.sqrt(D)
            p = np.exp(scores - scores.max())
            out[s, h] = (p / p.sum()) @ v[:, h // group]
    return out


q = rng.standard_normal((len(seq_lens), HQ, D)).astype(np.float32)
by_hand = paged_decode_numpy(q, k_pool, v_pool, page_tables, seq_lens)

# %% [markdown]
# ## 3. kvlab's reference kernel
#
# kvlab's attention contract takes one flattened ("ragged") batch: the query rows of all sequences
# concatenated, `cu_q_lens` marking where each sequence's rows start, `kv_lens` the tokens in
# cache, and a padded page table. The plain-jnp `ragged_paged_attention` is the specification every
# Pallas kernel is tested against. A decode step is one query row per sequence.

# %%
from kvlab.attention.reference import AttentionOptions, ragged_paged_attention  # noqa: E402


def padded(rows):
    """Page-table rows of different lengths as one [S, max_pages] int32 array (0-padded)."""
    table = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for s, row in enumerate(rows):
        table[s, :len(row)] = row
    return table


table = padded(page_tables)
reference = ragged_paged_attention(
    jnp.asarray(q), jnp.asarray(k_pool)[None], jnp.asarray(v_pool)[None], 0,
    cu_q_lens=jnp.arange(len(seq_lens) + 1, dtype=jnp.int32), kv_lens=jnp.asarray(seq_lens, jnp.int32),
    page_table=jnp.asarray(table), num_seqs=len(seq_lens), options=AttentionOptions(sm_scale=D ** -0.5))
err = np.linalg.norm(np.asarray(reference) - by_hand) / np.linalg.norm(by_hand)
print(f"relative error, reference kernel vs by hand: {err:.1e}")
assert err < 1e-5

# %% [markdown]
# And against an implementation nobody here wrote: JAX's `jax.nn.dot_product_attention` on the
# contiguous keys of each sequence.

# %%
for s in range(len(seq_lens)):
    expected = jax.nn.dot_product_attention(q[s][None, None], keys[s][None], values[s][None])[0, 0]
    np.testing.assert_allclose(np.asarray(reference[s]), np.asarray(expected), rtol=1e-5, atol=1e-5)
print("the reference kernel agrees with jax.nn.dot_product_attention for every sequence")

# %% [markdown]
# ## 4. The same with `PagedKVCache`
#
# In kvlab the host bookkeeping (which page, which offset) and the device arrays are separate: a
# `PagedKVCache` hands out pages and page tables in plain Python, and its `init_storage` makes the
# device pytree of page arrays that the jitted step writes into. `admit` registers a sequence,
# `allocate` reserves room for its tokens, `pages` is its page table.

# %%
cache = kvlab.PagedKVCache(num_pages=POOL, page_size=PAGE)
storage = cache.init_storage(num_layers=1, num_kv_heads=HKV, head_dim=D, dtype=jnp.float32)
for s, n in enumerate(seq_lens):
    cache.admit(s, list(range(n)))                   # the token ids only matter for prefix caching
    cache.allocate(s, n)
    pages = cache.pages(s)
    slots = jnp.asarray([pages[j // PAGE] * PAGE + j % PAGE for j in range(n)], jnp.int32)
    storage = storage.write(0, jnp.asarray(keys[s]), jnp.asarray(values[s]), slots)
print("pages in use:", cache.stats().pages_used, "of", cache.stats().pages_total)

table = padded([cache.pages(s) for s in range(len(seq_lens))])
with_cache = ragged_paged_attention(
    jnp.asarray(q), storage.k, storage.v, 0, cu_q_lens=jnp.arange(len(seq_lens) + 1, dtype=jnp.int32),
    kv_lens=jnp.asarray(seq_lens, jnp.int32), page_table=jnp.asarray(table), num_seqs=len(seq_lens),
    options=AttentionOptions(sm_scale=D ** -0.5))
np.testing.assert_allclose(np.asarray(with_cache), by_hand, rtol=1e-5, atol=1e-5)
for s in range(len(seq_lens)):
    cache.free(s)
print("same output; after free:", cache.stats().pages_used, "pages in use")

# %% [markdown]
# That is all an engine does per step, for every layer: the scheduler picks the tokens, the cache
# picks their pages, the attention backend reads K/V through the page table. `kvlab.Engine`
# composes exactly these parts; notebook 6 assembles one.
