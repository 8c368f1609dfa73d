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
# # 2. Prefix sharing: hash-chained pages vs a radix tree
#
# Many requests start the same way: a system prompt, few-shot examples, the history of a chat.
# Their KV for that shared prefix is identical, so a cache can keep it and skip recomputing it.
# Two designs do this in production:
#
# * **hash-chained pages** (vLLM's automatic prefix caching): each full page is named by a hash
#   of its tokens *and its parent page's hash*, so equal hashes mean equal prefixes; a lookup
#   walks a new prompt page by page through a hash table;
# * a **radix tree** (SGLang's RadixAttention): the cached sequences form a token trie whose edges
#   own pages; a lookup descends the tree.
#
# This notebook compares their hit rate on SGLang's generated shared-prefix workload against its
# analytic optimum, as the cache shrinks; shows what *longest-prefix-match* scheduling adds; and
# draws the tree.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import kvlab
from kvlab.bench import simulate
from kvlab.kvcache.block_hash import Sha256BlockHasher, chain_hashes
from kvlab.workloads import shared_prefix, shared_prefix_optimal_hit_rate, tree_of_thought

QUICK = os.environ.get("KVLAB_NOTEBOOK_QUICK") == "1"
SIZES = (dict(groups=8, prompts_per_group=8, system_tokens=512, question_tokens=64, output_tokens=16)
         if QUICK else
         dict(groups=32, prompts_per_group=16, system_tokens=1024, question_tokens=128, output_tokens=64))

# %% [markdown]
# ## Hash chains in one picture
#
# Two prompts that share their first 40 tokens, pages of 16: the first two pages (32 tokens) hash
# the same, the third differs although 8 of its tokens are shared - a page is reused whole or not
# at all. Every hash depends on all the tokens before it, so one lookup per page suffices.

# %%
rng = np.random.default_rng(0)
shared = rng.integers(3, 32000, 40).tolist()
a = shared + rng.integers(3, 32000, 30).tolist()
b = shared + rng.integers(3, 32000, 30).tolist()
hasher = Sha256BlockHasher()
ha = chain_hashes(hasher, hasher.root(None), a, 16, 0, len(a) // 16)
hb = chain_hashes(hasher, hasher.root(None), b, 16, 0, len(b) // 16)
for i, (x, y) in enumerate(zip(ha, hb)):
    print(f"page {i}: {x.hex()[:12]}...  {y.hex()[:12]}...  {'same' if x == y else 'different'}")

# %% [markdown]
# ## Hit rate against the optimum, as the cache shrinks
#
# SGLang's workload: G groups of P prompts; each group shares a system prompt, each prompt adds
# its own question. The best any cache can do is compute each system prompt once, which gives the
# analytic optimum below. Requests arrive two per step in shuffled order, and the cache is made
# smaller and smaller than the whole workload's prompts.

# %%
requests = shared_prefix(**SIZES, seed=2)
optimum = shared_prefix_optimal_hit_rate(**{k: v for k, v in SIZES.items() if k != "output_tokens"})
total = sum(len(r.prompt_token_ids) + r.max_tokens for r in requests)
print(f"{len(requests)} requests, {total} tokens in all; optimal hit rate {optimum:.1%}")

caches = {
    "paged hash (page 16)": lambda t: kvlab.PagedKVCache(num_pages=t // 16, page_size=16,
                                                         prefix_caching=True),
    "radix (page 1)": lambda t: kvlab.RadixKVCache(num_pages=t, page_size=1),
    "radix (page 16)": lambda t: kvlab.RadixKVCache(num_pages=t // 16, page_size=16),
}
fractions = [0.05, 0.1, 0.2, 0.4, 0.8]
hit = {name: [] for name in caches}
for frac in fractions:
    tokens = int(total * frac) // 16 * 16
    for name, make in caches.items():
        scheduler = kvlab.ContinuousScheduler(max_num_seqs=64, max_num_batched_tokens=4096)
        result = simulate(scheduler, make(tokens), requests, arrivals_per_step=2)
        hit[name].append(result.stats.hit_rate)
for name, rates in hit.items():
    print(f"{name:22s}", "  ".join(f"{f:.0%}: {h:5.1%}" for f, h in zip(fractions, rates)))

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, rates in hit.items():
    ax.plot(fractions, rates, marker="o", label=name)
ax.axhline(optimum, color="gray", ls="--", label="optimum")
ax.set_xscale("log")
ax.set_xlabel("cache capacity / all the workload's tokens")
ax.set_ylabel("prefix hit rate")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# With room to spare both designs reach nearly the optimum. The radix tree with one-token pages
# can match a prefix to the token, the hash cache only to the page; when memory is tight, what
# matters is which prefixes survive eviction (both evict least-recently-used leaves first here).
#
# ## What the scheduling order adds
#
# Prefix caching only helps if the requests that share a prefix run while it is still cached.
# FCFS serves them in arrival order - shuffled - so under memory pressure a system prompt is often
# evicted before its group's next request arrives. SGLang's *longest prefix match* policy runs
# the waiting requests with the most cached tokens first. Here all requests wait from the start
# and the cache holds a tenth of the workload.

# %%
tight = int(total * 0.1) // 16 * 16
for policy in [kvlab.FCFS(), kvlab.LongestPrefixMatch()]:
    scheduler = kvlab.ContinuousScheduler(max_num_seqs=16, max_num_batched_tokens=2048, policy=policy)
    result = simulate(scheduler, kvlab.RadixKVCache(num_pages=tight, page_size=1), requests)
    print(f"{type(policy).__name__:20s} hit rate {result.stats.hit_rate:6.1%} "
          f"({result.stats.hit_rate / optimum:.0%} of the optimum), {result.steps} steps")

# %% [markdown]
# ## Pictures of the tree
#
# A tree-of-thought workload (a root prompt, three branches, each branching again) fills a radix
# cache; each node of the drawing is an edge of the tree, labelled with how many tokens it holds.
# Shared prefixes are stored once, at the inner nodes.

# %%
cache = kvlab.RadixKVCache(num_pages=4096, page_size=1)
thoughts = tree_of_thought(depth=2, branching=3, root_tokens=64, step_tokens=16, seed=0)
for i, r in enumerate(thoughts):
    cache.admit(i, r.prompt_token_ids)
    cache.allocate(i, len(r.prompt_token_ids))
    cache.commit(i, r.prompt_token_ids, len(r.prompt_token_ids))
    cache.free(i)                     # finished: its pages stay in the tree, evictable


def draw_tree(root, ax):
    """Leaves spread over the y axis, each inner node centred on its children; x is depth."""
    ys, leaves = {}, [0]

    def place(node, depth):
        kids = list(node.children.values())
        for child in kids:
            place(child, depth + 1)
        ys[id(node)] = (np.mean([ys[id(c)][1] for c in kids]) if kids else leaves[0], depth)
        if not kids:
            leaves[0] += 1

    place(root, 0)
    stack = [root]
    while stack:
        node = stack.pop()
        y, x = ys[id(node)]
        for child in node.children.values():
            cy, cx = ys[id(child)]
            ax.plot([x, cx], [y, cy], color="gray", lw=1)
            stack.append(child)
        ax.scatter([x], [y], s=300, color="tab:blue" if node.key else "black", zorder=2)
        ax.annotate(f"{len(node.key)}" if node.key else "root", (x, y), textcoords="offset points",
                    xytext=(0, 10), ha="center", fontsize=8)
    ax.set_axis_off()


fig, ax = plt.subplots(figsize=(6, 4))
draw_tree(cache.tree.root(None), ax)
ax.set_title("radix tree after a tree-of-thought workload (tokens per edge)")
plt.show()
print(f"tokens sent: {sum(len(r.prompt_token_ids) for r in thoughts)}; "
      f"tokens cached: {cache.stats().pages_cached} (page size 1)")
