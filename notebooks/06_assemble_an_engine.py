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
# # 6. Assemble your own engine
#
# vLLM, SGLang, TGI, LMDeploy, TensorRT-LLM and DeepSpeed-FastGen each fixed one combination of a
# KV cache, a scheduler, an admission rule and a preemption strategy. In kvlab those are separate
# parts with one contract each, so each system is a few lines (`kvlab.bench.presets`) - and so is
# a combination none of them ships. This notebook
#
# 1. reads two presets to see how little a composition is;
# 2. builds a new one: SGLang's radix tree and cache-aware order under LMDeploy's fixed-shape
#    persistent batch, preempting by swap to a host tier;
# 3. compares all of them on one shared-prefix workload on a simulated H100 clock (seconds);
# 4. serves the same kind of workload for real, on SmolLM2, with two of them.

# %%
import inspect
import os

import matplotlib.pyplot as plt

import kvlab
from kvlab.bench import LinearStepCost, markdown_table, presets, simulate
from kvlab.bench.compare import Workload, serve
from kvlab.bench.compare import rows as table_rows
from kvlab.bench.presets import Preset
from kvlab.schedulers import SwapPreemption
from kvlab.workloads import poisson_arrivals, shared_prefix, shared_prefix_optimal_hit_rate

QUICK = os.environ.get("KVLAB_NOTEBOOK_QUICK") == "1"
print(inspect.getsource(presets.sglang))
print(inspect.getsource(presets.lmdeploy))

# %% [markdown]
# ## A new combination
#
# A persistent batch has fixed shapes (one compiled step, CUDA-graph friendly) and a fixed token
# budget; LMDeploy pairs it with all-layer blocks. SGLang's radix tree matches prefixes to the
# token, and its longest-prefix-match order keeps requests that share a prefix together. Putting
# them together, with swap preemption to host memory instead of recompute, is one constructor call
# per part:

# %%
def radix_persistent(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 2048) -> Preset:
    """Radix tree (page 1) + longest prefix match + persistent batch + swap to a host tier."""
    return Preset(
        name="radix+persistent+swap",
        cache=kvlab.RadixKVCache(num_pages=kv_tokens, page_size=1, host_tier=kvlab.HostTier(kv_tokens)),
        scheduler=kvlab.PersistentScheduler(num_slots=max_num_seqs, tokens_per_step=token_budget,
                                            policy=kvlab.LongestPrefixMatch(),
                                            preemption=SwapPreemption()))

# %% [markdown]
# ## All of them on one workload, on a simulated H100
#
# SGLang's shared-prefix workload arriving at a Poisson rate, with a KV cache that holds only part
# of it, so eviction and preemption matter. Each step lasts what a Llama-3-8B-on-H100 cost model
# says (`LinearStepCost.llama3_8b_h100`); the caches and schedulers are the real ones. The two
# persistent batches get a 512-token budget: their steps have one fixed shape, so every step costs
# the whole budget, and LMDeploy's default of 8192 would make every decode step a full prefill.

# %%
SIZES = (dict(groups=8, prompts_per_group=8, system_tokens=1024, question_tokens=128, output_tokens=64)
         if QUICK else
         dict(groups=32, prompts_per_group=16, system_tokens=2048, question_tokens=128, output_tokens=256))
requests = poisson_arrivals(shared_prefix(**SIZES, seed=0), rate=20.0, seed=1)
optimum = shared_prefix_optimal_hit_rate(**{k: v for k, v in SIZES.items() if k != "output_tokens"})
KV_TOKENS = 16384 if QUICK else 65536
makers = {name: presets.PRESETS[name] for name in ["vllm", "sglang", "tgi", "lmdeploy", "trtllm",
                                                    "deepspeed", "static"]}
makers["radix+persistent+swap"] = radix_persistent
rows = []
fixed_budget = dict(token_budget=512)      # a persistent batch pads every step to its budget
for name, make in makers.items():
    kwargs = {"static": dict(max_seq_len=2048), "lmdeploy": fixed_budget,
              "radix+persistent+swap": fixed_budget}.get(name, {})
    preset = make(KV_TOKENS, max_num_seqs=64, **kwargs)
    r = simulate(preset.scheduler, preset.cache, requests, step_cost=LinearStepCost.llama3_8b_h100())
    s = r.summary()
    rows.append({"composition": name, "output tok/s": s["output_tokens_per_s"],
                 "TTFT P50 (ms)": 1e3 * s["ttft_p50_s"], "TTFT P99 (ms)": 1e3 * s["ttft_p99_s"],
                 "ITL P99 (ms)": 1e3 * s["itl_p99_s"], "hit rate": r.stats.hit_rate,
                 "preemptions": r.preemptions})
print(f"{len(requests)} requests, KV cache of {KV_TOKENS} tokens; optimal hit rate {optimum:.1%}\n")
print(markdown_table(rows, {"hit rate": ".1%"}, float_format=".1f"))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
names = [r["composition"] for r in rows]
ax1.barh(names, [r["output tok/s"] for r in rows], color="tab:blue")
ax1.set_xlabel("output tokens/s (simulated Llama-3-8B, H100)")
ax2.barh(names, [r["TTFT P99 (ms)"] for r in rows], color="tab:orange")
ax2.set_xlabel("TTFT P99 (ms)")
ax2.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# What to look for: the compositions with a prefix cache (all but DeepSpeed's and static
# batching) skip most of the prefill; static batching waits for whole batches; whether the new
# combination earns its place depends on the load and the cache size - which is the point of
# making it a one-line experiment. `kvlab sweep --preset custom --vary cache=paged,radix ...` runs
# such grids from the command line.
#
# ## For real: SmolLM2 on this machine
#
# The simulator's schedulers and caches are the engine's, but the clock is a model. The harness
# (`kvlab.bench.compare.serve`) runs the same kind of workload through real engines on the bundled
# SmolLM2-135M and measures on the wall clock. On a CPU this is slow, so the workload is small and
# there is no warm-up pass: the steps that compile are timed apart and kept off the clock (the
# table counts them).

# %%
model, tokenizer = kvlab.models.load("smollm2-135m")
small = shared_prefix(groups=2, prompts_per_group=4, system_tokens=128, question_tokens=16,
                      output_tokens=8 if QUICK else 32, seed=0, vocab_size=model.config.vocab_size)
workload = Workload.open_loop("shared-prefix", small)
real = []
small_kv = dict(max_num_seqs=8, token_budget=256)
for name, make in [("vllm", lambda: presets.vllm(4096, **small_kv)),
                   ("radix+persistent+swap", lambda: radix_persistent(4096, **small_kv))]:
    _, runs = serve(model, make, workload, max_model_len=512, warmup=0)
    real += table_rows(name, runs)
columns = ["preset", "output_tokens_per_s", "ttft_p50_s", "hit_rate", "compilations"]
formats = {"output_tokens_per_s": ".1f", "ttft_p50_s": ".3f", "hit_rate": ".1%", "compilations": ".0f"}
print(markdown_table([{k: r[k] for k in columns} for r in real], formats))
assert all(r["requests"] == len(small) for r in real)
