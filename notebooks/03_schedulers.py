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
# # 3. Schedulers: continuous, chunked prefill, persistent batch
#
# A scheduler decides, every step, which requests' tokens run together. kvlab has three:
#
# * `ContinuousScheduler` (vLLM v0, TGI v2): a new request's whole prompt runs in one step, beside
#   the running decodes; requests join and leave the batch at every step;
# * `ChunkedScheduler` (Sarathi-Serve, vLLM v1): every step has a token budget; decodes go first and
#   prompts fill what is left in chunks, so no step is much longer than the budget;
# * `PersistentScheduler` (LMDeploy, TensorRT-LLM): a fixed number of slots and a fixed token
#   budget, so every step has the same shape (one compilation) at the price of padding.
#
# They are compared here on one workload - short chats with some long (summarization-like)
# prompts mixed in, arriving as a Poisson process - on a simulated clock: each step lasts what a
# cost model of Llama-3-8B on an H100 says for its tokens and KV reads
# (`LinearStepCost.llama3_8b_h100`). No model runs, so this takes seconds; the schedulers and
# caches are the very objects an engine uses.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import kvlab
from kvlab.bench import LinearStepCost, simulate
from kvlab.workloads import long_prompt_mix, poisson_arrivals, sharegpt_like

QUICK = os.environ.get("KVLAB_NOTEBOOK_QUICK") == "1"
N_CHAT, N_LONG, RATE = (150, 30, 8.0) if QUICK else (600, 120, 8.0)

chats = sharegpt_like(N_CHAT, seed=0)
docs = long_prompt_mix(N_LONG, seed=1, max_prompt=6000)
order = np.random.default_rng(2).permutation(len(chats) + len(docs))
requests = poisson_arrivals([(chats + docs)[i] for i in order], RATE, seed=3)
cost = LinearStepCost.llama3_8b_h100()
print(f"{len(requests)} requests at {RATE} req/s; longest prompt "
      f"{max(len(r.prompt_token_ids) for r in requests)} tokens")

# %%
schedulers = {
    "continuous": lambda: kvlab.ContinuousScheduler(max_num_seqs=256, max_num_batched_tokens=8192),
    "chunked (512)": lambda: kvlab.ChunkedScheduler(max_num_seqs=256, max_num_batched_tokens=512),
    "persistent (256 slots, 512)": lambda: kvlab.PersistentScheduler(num_slots=256, tokens_per_step=512),
}
results = {}
for name, make in schedulers.items():
    cache = kvlab.PagedKVCache(num_pages=65536 * 7 // 16, page_size=16)   # ~60 GB of Llama-3-8B KV
    results[name] = simulate(make(), cache, requests, step_cost=cost)
    s = results[name].summary()
    print(f"{name:28s} TTFT P50 {1e3 * s['ttft_p50_s']:7.1f} ms  P99 {1e3 * s['ttft_p99_s']:7.1f} ms   "
          f"ITL P50 {1e3 * s['itl_p50_s']:5.1f}  P99 {1e3 * s['itl_p99_s']:6.1f} ms  "
          f"{s['output_tokens_per_s']:7.0f} tok/s")

# %% [markdown]
# ## The distributions
#
# Percentiles hide the shape; cumulative distributions show it. TTFT is how long a user waits for
# the first word, the inter-token latency (ITL) how smooth the stream is afterwards.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
for name, r in results.items():
    records = r.records()
    ttft = np.sort([x.ttft for x in records])
    itl = np.sort([g for x in records for g in x.itls])
    ax1.plot(1e3 * ttft, np.linspace(0, 1, len(ttft)), label=name)
    ax2.plot(1e3 * itl, np.linspace(0, 1, len(itl)), label=name)
ax1.set(xscale="log", xlabel="TTFT (ms)", ylabel="fraction of requests")
ax2.set(xscale="log", xlabel="inter-token latency (ms)", ylabel="fraction of token gaps")
ax1.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Why chunking removes decode stalls
#
# With the continuous scheduler a long prompt runs whole, in one step, together with every running
# decode: that step lasts as long as the prompt's prefill, and every decoding request waits for it.
# That is a *decode stall*, the long tail of the ITL curve above. The chunked scheduler caps every
# step at its token budget, so a long prompt is spread over several steps and the decodes beside
# it only ever wait one short step. The cost: the long prompt's first token comes a little later,
# and a step of 512 tokens uses the GPU less well than one of 8192.
#
# One request's token times make this concrete: its gaps jump wherever a long prompt was admitted.

# %%
def slowest_stream(result):
    """The record with the largest single gap between two of its tokens."""
    return max((x for x in result.records() if len(x.itls) > 10), key=lambda x: max(x.itls))


fig, ax = plt.subplots(figsize=(8, 3))
for name in ["continuous", "chunked (512)"]:
    rec = slowest_stream(results[name])
    ax.plot(np.array(rec.token_times[1:]) - rec.arrival, 1e3 * np.array(rec.itls), marker=".", label=name)
    print(f"{name:14s}: worst gap of the worst stream {1e3 * max(rec.itls):6.1f} ms, "
          f"its median gap {1e3 * np.median(rec.itls):5.1f} ms")
ax.set(xlabel="seconds since the request arrived", ylabel="gap before this token (ms)", yscale="log")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The budget is the knob: a smaller one gives smoother streams and more steps, a larger one fewer,
# longer steps. Try `ChunkedScheduler(max_num_batched_tokens=2048)` above, or run
# `benchmarks/schedulers_host.py`, which also measures preemption by swap vs recompute and the
# host cost of scheduling per step.
