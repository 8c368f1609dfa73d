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
# # 4. Sliding windows and attention sinks: the circular cache
#
# Some models attend only to the last W tokens (Mistral's sliding window), and StreamingLLM showed
# that any model can stream past its training length if it keeps the last W tokens *plus the first
# few* ("attention sinks": the softmax parks its excess weight there). Either way, tokens that fell
# out of the window are never read again, so their memory can be reused: a **circular** cache gives
# each sequence a fixed ring of pages (TensorRT-LLM's cyclic KV cache) and writes new tokens over
# the oldest.
#
# This notebook runs the bundled SmolLM2-135M with a window of 64 tokens and 4 sinks, and shows
#
# 1. the memory: constant per sequence, however long it generates, where a paged cache grows;
# 2. the output: token for token what a plain decode with the window-and-sinks mask gives (the
#    masked reference: a full forward over the whole sequence per token, no cache at all).

# %%
import os

import matplotlib.pyplot as plt

import kvlab
from kvlab.engine import DenseReferenceDecoder

QUICK = os.environ.get("KVLAB_NOTEBOOK_QUICK") == "1"
NEW_TOKENS = 64 if QUICK else 400
WINDOW, SINKS, STEP = 64, 4, 16       # STEP: the most new tokens a sequence computes per step

model, tokenizer = kvlab.models.load("smollm2-135m")
prompts = [tokenizer.encode_chat(q) for q in ["Write a short story about a lighthouse keeper.",
                                              "Explain how a bicycle stays upright."]]
print("prompt lengths:", [len(p) for p in prompts], "tokens; window", WINDOW, "+", SINKS, "sinks")

# %% [markdown]
# ## Memory: a ring per sequence
#
# The same requests through two engines: a paged cache (full attention) and a circular cache. We
# record the pages in use after every step. A step may add at most `STEP` tokens to a sequence
# (the chunked scheduler cuts the prompts into chunks of that size), so the ring needs only
# `window + STEP - 1` tokens.

# %%
params = kvlab.SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
caches = {
    "paged (full attention)": kvlab.PagedKVCache(num_pages=256, page_size=16),
    f"circular (window {WINDOW}, {SINKS} sinks)": kvlab.CircularKVCache(
        num_pages=256, page_size=16, window=WINDOW, num_sink_tokens=SINKS, max_step_tokens=STEP),
}
usage, outputs = {}, {}
for name, cache in caches.items():
    engine = kvlab.Engine(model, cache=cache, tokenizer=tokenizer, max_model_len=1024,
                          scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=STEP))
    ids = [engine.add_request(p, params) for p in prompts]
    tokens, usage[name] = {i: [] for i in ids}, []
    while engine.has_unfinished():
        for event in engine.step():
            tokens[event.request_id] += event.new_token_ids
        usage[name].append(cache.stats().pages_used)
    outputs[name] = [tokens[i] for i in ids]
    print(f"{name:32s} peak pages {max(usage[name]):3d}; the attention it computes: "
          f"{engine.attention_options}")

fig, ax = plt.subplots(figsize=(7, 3))
for name, used in usage.items():
    ax.plot(used, label=name)
ax.set(xlabel="engine step", ylabel="KV pages in use (2 sequences)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The circular cache's ring holds the window plus one step's new tokens, rounded up to pages (5
# pages of 16), and the sinks take one page more: that is all a sequence ever holds, while the
# paged cache grows by a page every 16 tokens. The engine learns the window
# from the cache (`engine.attention_options`) and masks accordingly, so a model trained without a
# window gets StreamingLLM's attention.
#
# ## Output: equal to the masked reference
#
# Reading pages out of a ring, overwritten in place, is easy to get subtly wrong. The check is
# strict: greedy decoding through the circular cache must give exactly the tokens of a decode with
# no cache at all and the same window-and-sinks mask. One forward pass over the prompt and the
# generated tokens checks them all (`greedy_choices`): causal attention makes the logits at each
# position those of the prefix before it, so its greedy choices equal the generated tokens
# exactly when a token-by-token reference decode would have produced them.

# %%
circular = f"circular (window {WINDOW}, {SINKS} sinks)"
masked = DenseReferenceDecoder(model, options=engine.attention_options)
for prompt, got in zip(prompts, outputs[circular]):
    assert masked.greedy_choices(prompt, got) == got, "the circular cache diverged from the masked reference"
print(f"{len(prompts)} sequences: the same {NEW_TOKENS} tokens as the masked reference")
for full, windowed in zip(outputs["paged (full attention)"], outputs[circular]):
    first = next((i for i, (a, b) in enumerate(zip(full, windowed)) if a != b), None)
    print(f"full attention and the window agree for {first if first is not None else len(full)} tokens")

# %% [markdown]
# Once a sequence outgrows the window, full attention and the windowed model see different
# contexts and their outputs part; the text stays fluent thanks to the sinks. Here is the end of
# the first story with the window:

# %%
print(tokenizer.decode(outputs[circular][0])[-400:])
