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
# # 7. Quantized KV: memory, accuracy, speed
#
# A KV cache in a narrower format than the model's dtype holds more tokens in the same bytes.
# kvlab gives the format to the cache as a strategy object (`kvlab.kvcache.formats`, see
# [KV formats](../docs/kv_formats.md)); schedulers, prefix reuse, swap and the engine are unchanged:
#
# * `Plain()`: the model's dtype (the default);
# * `Fp8E4M3`, `Fp8E5M2`: 8-bit floats with one float32 scale per layer (and KV head), as vLLM's
#   `kv_cache_dtype="fp8"` and TensorRT-LLM's FP8 KV store them;
# * `Int8()`, `Int4()`, `AsymmetricInt(bits=2)`: unsigned integer codes with a float16 scale and
#   zero point per token and KV head, computed when the row is written, as LMDeploy TurboMind's
#   `quant_policy=8` and `quant_policy=4` store them.
#
# This notebook measures what each format saves (bytes per token), what it costs (round-trip
# error on synthetic keys, tokens on a small model, the measured perplexity of SmolLM2) and what
# it gains in speed (the H200 kernel figures, quoted), and runs a quantized cache through the
# Pallas kernels in interpret mode. Everything runs on a CPU in well under a minute.

# %%
import functools
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import kvlab
from kvlab.engine.defaults import kv_bytes_per_token
from kvlab.kvcache.formats import (
    PLAIN,
    AsymmetricInt,
    CalibratedScales,
    Fp8E4M3,
    Fp8E5M2,
    Int4,
    Int8,
    PerTensor,
    StaticScales,
    bytes_per_token,
)
from kvlab.models import LlamaModel, ModelConfig

QUICK = os.environ.get("KVLAB_NOTEBOOK_QUICK") == "1"
NEW_TOKENS = 16 if QUICK else 32          # greedy tokens per prompt in section 3
WINDOWS = 2 if QUICK else 8               # teacher-forced sequences in section 3
FORMATS = [PLAIN, Fp8E4M3(), Fp8E5M2(), Int8(), Int4(), AsymmetricInt(bits=2)]

# %% [markdown]
# ## 1. Memory: bytes per token
#
# `bytes_per_token` counts what the pages really hold: the codes *and* the per-token metadata
# (two float16 numbers per token, KV head and K or V for the integer formats; fp8's per-layer
# scales are a few floats per layer, not per token, and are not counted).
# `kv_bytes_per_token(config, dtype, kv_format)` is the same count from a model config; the
# engine's `default_cache` sizes a cache by it. Below: a Llama-3-8B-like config (32 layers, 8 KV
# heads, head_dim 128, bf16) and SmolLM2-135M's head_dim 64, and the tokens a 40 GiB budget holds.

# %%
llama8b = ModelConfig.llama_3_8b()
smollm2 = ModelConfig.smollm2_135m()
budget = 40 * 2**30
plain_bytes = kv_bytes_per_token(llama8b, jnp.bfloat16)
print(f"{'format':11} {'bytes/token':>11} {'metadata':>8} {'tokens in 40 GiB':>17} "
      f"{'x plain (D=128)':>15} {'x plain (D=64)':>14}")
tokens_in_budget = {}
for fmt in FORMATS:
    per_token = kv_bytes_per_token(llama8b, jnp.bfloat16, fmt)
    assert per_token == bytes_per_token(fmt, num_layers=llama8b.num_layers, num_kv_heads=llama8b.num_kv_heads,
                                        head_dim=llama8b.head_dim, model_dtype=jnp.bfloat16)
    meta = 2 * llama8b.num_layers * llama8b.num_kv_heads * 2 * fmt.meta_width
    small = kv_bytes_per_token(smollm2, jnp.bfloat16) / kv_bytes_per_token(smollm2, jnp.bfloat16, fmt)
    tokens_in_budget[fmt.name] = budget // per_token
    print(f"{fmt.name:11} {per_token:11,d} {meta / per_token:8.1%} {budget // per_token:17,d} "
          f"{plain_bytes / per_token:14.2f}x {small:13.2f}x")

fig, ax = plt.subplots(figsize=(6.5, 3.2))
names = list(tokens_in_budget)
bars = ax.bar(names, [tokens_in_budget[n] / 1e6 for n in names], color="tab:blue")
for bar, n in zip(bars, names):
    ax.annotate(f"{tokens_in_budget[n] / tokens_in_budget['plain']:.2f}x", (bar.get_x() + bar.get_width() / 2,
                bar.get_height()), ha="center", va="bottom", fontsize=8)
ax.set_ylabel("million tokens in 40 GiB")
ax.set_title("Llama-3-8B-like KV (bf16 model): tokens per byte budget")
plt.tight_layout()
plt.show()

# %% [markdown]
# fp8 halves the bytes exactly. The integer formats pay 4 bytes of metadata per token, KV head
# and K or V: 3% of int8's row at head_dim 128, 6% of int4's, 11% of int2's, and twice those
# shares at head_dim 64 (int4 there holds 3.6x the tokens of bf16, not 4x).
#
# ## 2. Round-trip error: per-token integers vs per-layer fp8
#
# The two families put their scale in different places:
#
# * **integers, per token**: each row (one token's K or V for one head) gets
#   `scale = (max - min) / (2^bits - 1)` and `zero = min`, so the error is at most half a step,
#   and the step is set by the row's *range*. No calibration, but one large element widens the
#   step for every element of its row;
# * **fp8, per layer**: one scale per layer (here vLLM's `calculate_kv_scales`: the first batch's
#   `amax / 200` for K), then each value is a float with 3 (e4m3) or 2 (e5m2) mantissa bits, so
#   the error is *relative* to each value (about 2^-4 or 2^-3 of it at worst) wherever it lies in
#   the range.
#
# Keys of real models are not Gaussian: a few channels carry large values for every token (the
# KIVI paper, Liu et al. 2024, shows them in Llama-2's keys; values have no such channels).
# Below, 512 key rows of one head at head_dim 128, first Gaussian, then heavy-tailed (Student t,
# 4 degrees of freedom) with 4 outlier channels about 15x larger. The error is the relative RMS
# error of the decoded rows, over all channels and over the ordinary channels alone. For
# comparison, per-*channel* int4 and int2 (each channel's own scale and zero point over the 512
# tokens: KIVI's scheme for keys, computed here in NumPy, not a kvlab format).

# %%
rng = np.random.default_rng(0)
T, D, OUTLIERS = 512, 128, [7, 40, 77, 101]
gaussian = rng.standard_normal((T, 1, D)).astype(np.float32)
realistic = rng.standard_t(4, (T, 1, D)).astype(np.float32)
realistic[:, :, OUTLIERS] = (rng.choice([-15.0, 15.0], len(OUTLIERS))
                             + 2.0 * rng.standard_normal((T, 1, len(OUTLIERS)))).astype(np.float32)
ordinary = np.setdiff1d(np.arange(D), OUTLIERS)


@functools.partial(jax.jit, static_argnums=0)
def round_trip(fmt, x):
    """x [T, Hkv, D] through fmt's encode and decode; fp8 scales calibrated on x as vLLM does."""
    scale = fmt.calibrate(jnp.zeros(x.shape[1]), x, jnp.ones(x.shape[0], bool), 0)
    return fmt.decode(*fmt.encode(x, scale), scale, jnp.float32)


def per_channel(bits, x):
    """KIVI-style keys: asymmetric integers with a scale and zero point per channel, over tokens."""
    lo, hi = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
    scale = (hi - lo) / (2**bits - 1)
    return np.round((x - lo) / scale) * scale + lo


def rel_err(x, y, channels=slice(None)):
    return float(np.linalg.norm((x - y)[..., channels]) / np.linalg.norm(x[..., channels]))


calibrated = CalibratedScales(granularity=PerTensor())
schemes = {f.name: functools.partial(round_trip, f) for f in
           [Fp8E4M3(scales=calibrated), Fp8E5M2(scales=calibrated), Int8(), Int4(), AsymmetricInt(bits=2)]}
schemes["int4 per channel"] = functools.partial(per_channel, 4)
schemes["int2 per channel"] = functools.partial(per_channel, 2)
errors = {}
print(f"{'scheme':17} {'Gaussian':>9} {'outliers: all':>14} {'ordinary channels':>18}")
for name, f in schemes.items():
    out_g, out_r = np.asarray(f(gaussian)), np.asarray(f(realistic))
    errors[name] = (rel_err(gaussian, out_g), rel_err(realistic, out_r), rel_err(realistic, out_r, ordinary))
    print(f"{name:17} {errors[name][0]:9.4f} {errors[name][1]:14.4f} {errors[name][2]:18.4f}")
assert errors["int4 per channel"][2] < errors["int4"][2] and errors["int8"][0] < errors["fp8-e4m3fn"][0]

fig, ax = plt.subplots(figsize=(7.5, 3.4))
xs, width = np.arange(len(errors)), 0.27
labels = ["Gaussian keys", "outlier keys, all channels", "outlier keys, ordinary channels"]
for i, label in enumerate(labels):
    ax.bar(xs + (i - 1) * width, [e[i] for e in errors.values()], width, label=label)
ax.set_xticks(xs, list(errors), rotation=20)
ax.set_yscale("log")
ax.set_ylabel("relative RMS error")
ax.set_title("round-trip error of 512 key rows, head_dim 128")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# On Gaussian rows each integer bit roughly halves the error, and int8 beats fp8 (256 uniform
# steps over a row's range against 3 mantissa bits). With outlier channels the per-token integer
# formats lose most on the ordinary channels: the outliers set each row's range, so int4's 15
# steps are about 2 units wide and most ordinary values fall on one or two codes. fp8's error is
# relative to each value and barely moves. Per-channel scales give the outlier channels their own
# range and halve int4's error on the ordinary channels (the heavy tails still cost: a channel's
# range spans its extremes over all 512 tokens). That is why KIVI quantizes keys per channel
# (values per token) and keeps the most recent tokens in full precision; kvlab's integer formats
# are per token, as LMDeploy's are.
#
# ## 3. Accuracy on a model
#
# A model reads its cache through attention, so what matters is how the errors change logits and
# tokens. On a CPU in seconds that means kvlab's tiny random-weight model (2 layers, 4 query and
# 2 KV heads; head_dim 32 here, so int4's two halves are wide enough for the kernels of section 4),
# in float32. Its keys have no outlier channels, so it shows the mechanics, not the size of the
# effect on a trained model. fp8 uses static scales of 1.0 (vLLM's default without calibrated
# scales), which suits this model's values of order one.
#
# First teacher forced: `model.dense_logits(tokens, kv_format=fmt)` encodes and decodes every K/V
# row as a cache in that format stores it. Then greedy decoding through an engine per format
# (e5m2 left out: each engine compiles its step), each with a `PagedKVCache(kv_format=...)` and the
# jnp `ReferenceAttention`, against plain.

# %%
model = LlamaModel(ModelConfig.tiny(head_dim=32), seed=0)
unit = StaticScales(k=1.0, v=1.0)
TINY_FORMATS = [PLAIN, Fp8E4M3(scales=unit), Fp8E5M2(scales=unit), Int8(), Int4(), AsymmetricInt(bits=2)]
windows = np.random.default_rng(1).integers(3, model.config.vocab_size, (WINDOWS, 64)).astype(np.int32)


@jax.jit
def teacher_forced(windows):
    """Per format, [windows, 64, vocab] logits with every K/V row stored in it (one compile)."""
    return {fmt.name: jax.vmap(lambda t, fmt=fmt: model.dense_logits(t, kv_format=fmt))(windows)
            for fmt in TINY_FORMATS}


out = teacher_forced(windows)
logits = {fmt.name: np.asarray(out[fmt.name]) for fmt in TINY_FORMATS}
base = logits["plain"]
logit_err = {n: float(np.abs(v - base).mean()) for n, v in logits.items() if n != "plain"}
top1 = {n: float((v.argmax(-1) == base.argmax(-1)).mean()) for n, v in logits.items() if n != "plain"}
print(f"teacher forced, {WINDOWS} x 64 random tokens:")
for n in logit_err:
    print(f"  {n:11} mean |logit error| {logit_err[n]:.5f}   top-1 token as plain {top1[n]:6.1%}")

# %%
PROMPTS = [[1, 5, 7, 9, 11, 13, 15, 17], [1, 20, 30, 40, 50, 60, 70, 80]]
PARAMS = kvlab.SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)


def generate(fmt, attention):
    """Greedy tokens of PROMPTS through an engine whose paged cache stores ``fmt``. The persistent
    scheduler pads every step to one shape, so each format compiles one step."""
    cache = kvlab.PagedKVCache(num_pages=16, page_size=16, kv_format=fmt)
    engine = kvlab.Engine(model, cache=cache, attention=attention, max_model_len=64,
                          scheduler=kvlab.PersistentScheduler(num_slots=2, tokens_per_step=16))
    return [c.token_ids for c in engine.generate(PROMPTS, PARAMS)]


greedy = {fmt.name: generate(fmt, kvlab.ReferenceAttention()) for fmt in TINY_FORMATS
          if fmt.name != "fp8-e5m2"}
print(f"greedy, {len(PROMPTS)} prompts x {NEW_TOKENS} tokens, against plain KV:")
same_tokens = {}
for name, outs in greedy.items():
    prefix = [next((i for i, (a, b) in enumerate(zip(t, u)) if a != b), len(t))
              for t, u in zip(outs, greedy["plain"])]
    same_tokens[name] = np.mean([a == b for t, u in zip(outs, greedy["plain"]) for a, b in zip(t, u)])
    print(f"  {name:11} same prefix {prefix}  same tokens {same_tokens[name]:6.1%}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
ax1.bar(list(logit_err), list(logit_err.values()), color="tab:orange")
ax1.set_yscale("log")
ax1.set_ylabel("mean |logit error|")
ax2.bar(list(top1), [100 * v for v in top1.values()], color="tab:green")
ax2.set_ylabel("top-1 token as plain (%)")
for ax in (ax1, ax2):
    ax.tick_params(axis="x", rotation=30)
fig.suptitle("tiny random model, teacher forced, against plain float32 KV")
plt.tight_layout()
plt.show()

# %% [markdown]
# The order is the one of section 2: int8 closest to plain, then fp8 e4m3, e5m2, int4, and int2
# far off. One changed token changes every later one, so greedy agreement falls faster than the
# logit error grows.
#
# **On a trained model.** `benchmarks/kv_format_accuracy.py` measures the bundled
# SmolLM2-135M-Instruct (bf16, head_dim 64) on the Python Language Reference text that the
# standard library ships (`pydoc_data.topics`), 4 windows of 512 tokens, teacher forced; fp8 with
# static scales of 1.0. Quoted from [KV formats](../docs/kv_formats.md) (a CPU run, not
# recomputed here: it takes minutes):
#
# | KV format | perplexity | change |
# |---|---|---|
# | plain (bf16) | 15.272 | |
# | fp8 e4m3 | 15.368 | +0.63% |
# | fp8 e5m2 | 15.785 | +3.36% |
# | int8 | 15.295 | +0.15% |
# | int4 | 17.591 | +15.2% |
# | int2 (per token) | 1431.9 | +9276% |
#
# int8 is within noise of bf16, as LMDeploy reports for `quant_policy=8` on its 7B models; int4
# per token costs 15% on this small model, and per-token int2 is unusable - the case for KIVI's
# per-channel keys.
#
# ## 4. Speed: the H200 kernel figures
#
# Decode attention reads every cached byte once and does little arithmetic with it, so fewer
# bytes should mean proportionally less time. kvlab's Pallas (Triton) kernels read the stored
# pages directly: they unpack codes to float16 and apply either fp8's per-layer scale (folded into
# the scores and probabilities) or the integers' per-token scale and zero point (one float16
# multiply-add an element). Quoted, not run here, from `benchmarks/kv_format_kernels.py` on an
# H200 ([benchmarks](../docs/benchmarks.md)): paged decode, Hq 32, Hkv 8, head_dim 128, page 16,
# bf16 model.

# %%
# format: (time at B=64 ctx 4096 in ms, speedup over plain; the same at B=4 ctx 32k)
decode = {"plain": (0.266, 1.0, 0.153, 1.0), "fp8-e4m3fn": (0.188, 1.41, 0.114, 1.35),
          "int8": (0.220, 1.21, 0.130, 1.18), "int4": (0.212, 1.26, 0.134, 1.15),
          "int2": (0.217, 1.23, 0.121, 1.27)}                           # one run, 2026-12-02
prefill_ms = {"plain": 1.582, "fp8-e4m3fn": 2.090, "int8": 2.385, "int4": 2.675}   # Triton, B=4, S=4096
by_name = {f.name: f for f in FORMATS}
ideal = {n: plain_bytes / kv_bytes_per_token(llama8b, jnp.bfloat16, by_name[n]) for n in decode}
print(f"{'format':11} {'fewer bytes':>11} {'B=64 ctx 4k':>12} {'speedup':>8} {'B=4 ctx 32k':>12} "
      f"{'speedup':>8} {'prefill B=4 S=4k':>17}")
for n, (t64, x64, t4, x4) in decode.items():
    pre = f"{prefill_ms[n]:.3f} ms" if n in prefill_ms else ""
    print(f"{n:11} {ideal[n]:10.2f}x {t64:9.3f} ms {x64:7.2f}x {t4:9.3f} ms {x4:7.2f}x {pre:>17}")

fig, ax = plt.subplots(figsize=(5.5, 3.6))
xs = np.array([ideal[n] for n in decode])
ax.plot([1, xs.max()], [1, xs.max()], color="gray", ls="--", label="time proportional to bytes")
for column, label, marker in [(1, "B=64, ctx 4096", "o"), (3, "B=4, ctx 32k", "s")]:
    ax.scatter(xs, [row[column] for row in decode.values()], marker=marker, label=label)
for n, x in zip(decode, xs):
    ax.annotate(n, (x, decode[n][1]), textcoords="offset points", xytext=(5, -10), fontsize=8)
ax.set_xlim(0.6, 8.2)
ax.set_xlabel("bytes of plain bf16 / bytes of the format")
ax.set_ylabel("decode speedup over plain bf16")
ax.set_title("H200 paged decode (quoted)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# At B=64, ctx 4096 plain bf16 already runs at the H200's copy bandwidth, so the only way to go
# faster is to read fewer bytes. fp8 reads half of them and gains 1.4x (not 2x: it reaches about
# 70% of the copy bandwidth). The integer formats gain only 1.2x, although int4 reads 3.8x fewer
# bytes: there the kernels are no longer limited by memory but by the instructions that unpack
# each code (an Nsight Compute profile found them issue-bound), even with each token's scale and
# zero point loaded as one word and folded into the matrix products. KIVI's pages are read by the
# kernels too (keys per channel over a page, dequantized element by element), but a tile is one
# 32-token page and the 2-bit decode takes 0.36 ms, 0.74x plain (another run of the same day,
# plain 0.270 ms). The prefill kernel, limited by compute rather than bytes, is slower
# with every quantized format (fp8 0.76x, int4 0.59x of plain). What has been tried is listed in
# [benchmarks](../docs/benchmarks.md); making low-bit KV pay on a GPU is open work.
#
# **The kernels in interpret mode.** `kvlab.PallasAttention(interpret=True)` runs the same
# kernels through plain JAX on any device: slow, but exact, which is how kvlab's tests check them
# on a CPU. Here the int4 cache of section 3 served by the kernels gives the greedy tokens of the
# reference attention reading the same int4 pages.

# %%
kernel_tokens = generate(Int4(), kvlab.PallasAttention(interpret=True))
assert kernel_tokens == greedy["int4"], (kernel_tokens, greedy["int4"])
print("the Pallas kernels (interpret mode) on int4 pages give the reference's tokens:",
      kernel_tokens[0][:8], "...")
