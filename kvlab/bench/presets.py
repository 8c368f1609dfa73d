"""The seed systems as compositions of kvlab parts: each preset is a few readable lines.

A preset gets a KV capacity in tokens and returns a fresh ``Preset`` (cache + scheduler, single
use). Where kvlab lacks a part the system has, the preset says so in ``missing`` instead of
substituting silently; ``Preset.engine(model)`` builds the engine.

Defaults follow each system's documented defaults (see ``../shared/ANCHORS.md``); every knob can be
overridden, e.g. a smaller token budget for a CPU run. The KV format is a knob too (``kv_format=``,
a format object of ``kvlab.kvcache.formats``; each system's default is its model-dtype KV), and the
quantized configurations the systems document are presets of their own, so the command line can
name them: ``vllm-fp8``, ``lmdeploy-kv8``, ``lmdeploy-kv4``, ``trtllm-fp8``, ``trtllm-int8``.

Examples:
    >>> p = vllm(kv_tokens=4096, max_num_seqs=8)
    >>> type(p.cache).__name__, p.cache.page_size, p.scheduler.max_num_batched_tokens, p.missing
    ('PagedKVCache', 16, 2048, ())
    >>> deepspeed(kv_tokens=4096).missing[0][:26]
    "ZeRO-Inference's NVMe weig"
    >>> q = lmdeploy_kv4(kv_tokens=4096)
    >>> q.name, type(q.cache).__name__, q.cache.kv_format.name
    ('lmdeploy-kv4', 'BlockedKVCache', 'int4')
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from kvlab.bench.custom import custom
from kvlab.bench.preset import Preset
from kvlab.bench.serving_attention import kernel_gap
from kvlab.kvcache import (
    BlockedKVCache,
    CircularKVCache,
    ContiguousKVCache,
    PagedKVCache,
    PriorityLRU,
    RadixKVCache,
)
from kvlab.kvcache.formats import PLAIN, CalibratedScales, Fp8E4M3, Int4, Int8, KVFormat, PerTensor
from kvlab.kvcache.tiers import PinnedHostTier
from kvlab.models.host_formats import SAME_DTYPE, HostFormat
from kvlab.models.streamed_layers import WeightBudget
from kvlab.schedulers import ChunkedScheduler, ContinuousScheduler, LongestPrefixMatch, PersistentScheduler
from kvlab.schedulers.admission import ReserveAdmission, StaticBatchAdmission


def vllm(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 2048, page_size: int = 16,
         kv_format: KVFormat = PLAIN) -> Preset:
    """vLLM v1: paged per-layer pools, hash-chained prefix cache, chunked prefill with a 2048-token
    budget, FCFS, preemption by recompute. KV in the model's dtype, as vLLM's default
    ``kv_cache_dtype="auto"``; ``vllm_fp8`` quantizes it."""
    cache = PagedKVCache(num_pages=kv_tokens // page_size, page_size=page_size, prefix_caching=True,
                         kv_format=checked(kv_format))
    return Preset(name="vllm", cache=cache,
                  scheduler=ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget),
                  missing=kernel_gap(kv_format, page_size=page_size))


def sglang(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 8192) -> Preset:
    """SGLang: radix tree over single-token pages, longest-prefix-match order (FCFS past 128
    waiting), chunked prefill."""
    return Preset(name="sglang", cache=RadixKVCache(num_pages=kv_tokens, page_size=1),
                  scheduler=ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget,
                                             policy=LongestPrefixMatch(max_queue=128)),
                  missing=("admission by max_new_tokens x new_token_ratio with retraction "
                           "(kvlab admits optimistically and preempts by recompute)",))


def tgi(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 4096) -> Preset:
    """TGI v3: radix prefix cache, chunked prefill, admission reserving prompt + max_new_tokens up
    front, so nothing is ever preempted."""
    return Preset(name="tgi", cache=RadixKVCache(num_pages=kv_tokens, page_size=1),
                  scheduler=ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget,
                                             admission=ReserveAdmission()))


def lmdeploy(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 8192, block_tokens: int = 64,
             prefix_caching: bool = False, kv_format: KVFormat = PLAIN) -> Preset:
    """LMDeploy TurboMind: blocks spanning all layers, persistent batch: fixed slots and a fixed
    per-step token budget (one compiled shape). TurboMind's defaults (``TurbomindEngineConfig``):
    64-token blocks (``cache_block_seq_len``), prefix caching off (``enable_prefix_caching``; True
    turns block reuse on), KV in the model's dtype (``quant_policy=0``; ``lmdeploy_kv8`` and
    ``lmdeploy_kv4`` quantize it)."""
    cache = BlockedKVCache(num_blocks=kv_tokens // block_tokens, block_tokens=block_tokens,
                           prefix_caching=prefix_caching, kv_format=checked(kv_format))
    return Preset(name="lmdeploy", cache=cache,
                  scheduler=PersistentScheduler(num_slots=max_num_seqs, tokens_per_step=token_budget),
                  missing=kernel_gap(kv_format, page_size=block_tokens))


def trtllm(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 8192,
           tokens_per_block: int = 64, host_tokens: int = 0, window: int | None = None,
           num_sink_tokens: int = 0, kv_format: KVFormat = PLAIN) -> Preset:
    """TensorRT-LLM: paged blocks with reuse under priority LRU, in-flight batching with
    GUARANTEED_NO_EVICT admission; ``host_tokens`` adds its secondary (host) pool: reusable blocks
    the GPU evicts are copied to pinned host memory and loaded back on a later hit
    (``KvCacheConfig(host_cache_size=...)``); with ``window``, the cyclic KV cache instead.
    KV in the model's dtype by default; ``trtllm_fp8`` and ``trtllm_int8`` quantize it."""
    checked(kv_format)
    if window is not None:
        cache = CircularKVCache(num_pages=kv_tokens // tokens_per_block, page_size=tokens_per_block,
                                window=window, num_sink_tokens=num_sink_tokens, max_step_tokens=token_budget,
                                kv_format=kv_format)
    else:
        tiers = PinnedHostTier(host_tokens // tokens_per_block) if host_tokens else None
        cache = PagedKVCache(num_pages=kv_tokens // tokens_per_block, page_size=tokens_per_block,
                             prefix_caching=True, eviction=PriorityLRU(), tiers=tiers, kv_format=kv_format)
    return Preset(name="trtllm", cache=cache,
                  scheduler=ContinuousScheduler(max_num_seqs=max_num_seqs,
                                                max_num_batched_tokens=token_budget,
                                                admission=ReserveAdmission()),
                  missing=(*trtllm_scale_notes(kv_format),
                           *kernel_gap(kv_format, page_size=tokens_per_block)))


def trtllm_scale_notes(kv_format: KVFormat) -> tuple[str, ...]:
    """Where ``kv_format``'s scales differ from TensorRT-LLM's INT8/FP8 KV, whose scales are one per
    tensor (``kv_cache_scaling_factor``), calibrated offline into the checkpoint."""
    if kv_format.meta_width:
        return (f"KV scales as TensorRT-LLM keeps them, one calibrated scale per tensor "
                f"(kv_cache_scaling_factor): kvlab's {kv_format.name} stores a scale and zero point per "
                f"token and KV head instead (LMDeploy's scheme: more bytes, less error)",)
    if not np.all(kv_format.initial_layer_scales(num_layers=1, num_kv_heads=1) > 0):
        return ("KV scales calibrated offline into the checkpoint (ModelOpt's kv_cache_scaling_factor): here "
                "each layer's first batch sets them (give a checkpoint's as StaticScales)",)
    return ()


def deepspeed(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 768, block_tokens: int = 64,
              weight_budget_gb: float | None = None, host_format: HostFormat = SAME_DTYPE) -> Preset:
    """DeepSpeed-FastGen: blocked KV and Dynamic SplitFuse, a fixed token budget per forward pass
    filled by decodes first and prompt chunks after. ``weight_budget_gb`` turns on ZeRO-Inference's
    weight offload: the layers that do not fit that many GB of device memory stay in pinned host
    memory and stream to the device per layer (0: every layer; None: all weights on the device),
    kept there as ``host_format`` says (``kvlab.models.host_formats``: ``Int8Channels()`` or
    ``Int4Groups()`` move a half or about a quarter of the bytes)."""
    budget = None if weight_budget_gb is None else WeightBudget(device_bytes=int(weight_budget_gb * 1e9),
                                                                host_format=host_format)
    return Preset(name="deepspeed",
                  cache=PagedKVCache(num_pages=kv_tokens // block_tokens, page_size=block_tokens),
                  scheduler=ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget),
                  weight_budget=budget,
                  missing=("ZeRO-Inference's NVMe weight tier: kvlab streams weights from pinned host "
                           "memory only",))


def static_batching(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int | None = None,
                    max_seq_len: int = 2048, page_size: int = 16) -> Preset:
    """The baseline of vLLM's 14-24x claim, HF ``generate``-style: every sequence reserves a
    static ``max_seq_len`` region (as many as ``kv_tokens`` hold, at most ``max_num_seqs``), a batch
    is admitted together and runs until its last request ends before the next batch starts. The
    default token budget holds a whole batch of prompts (one prefill step, as ``generate``). A
    region is whole pages: ``max_seq_len`` is rounded up to a multiple of ``page_size``."""
    max_seq_len = -(-max_seq_len // page_size) * page_size
    slots = max(1, min(max_num_seqs, kv_tokens // max_seq_len))
    token_budget = slots * max_seq_len if token_budget is None else token_budget
    return Preset(name="static", cache=ContiguousKVCache(num_slots=slots, max_seq_len=max_seq_len,
                                                          page_size=page_size),
                  scheduler=ContinuousScheduler(max_num_seqs=slots, max_num_batched_tokens=token_budget,
                                                admission=StaticBatchAdmission()),
                  missing=("prompts padded to the batch's longest and finished rows decoding on to "
                           "the batch's longest output: kvlab computes only real tokens, so this "
                           "baseline's steps are cheaper than generate's",))


def checked(kv_format) -> KVFormat:
    """``kv_format`` if it is a KV format object (it has the contract's methods); a TypeError naming
    the quantized presets otherwise (a name such as "int8" from ``kvlab bench --set``)."""
    if not all(callable(getattr(kv_format, m, None)) for m in ("check", "packed_dim", "encode", "decode")):
        raise TypeError(f"kv_format must be a KV format object of kvlab.kvcache.formats (Int8(), Int4(), "
                        f"Fp8E4M3(), ...), not {kv_format!r}; on the command line name a quantized preset "
                        f"instead: {', '.join(QUANTIZED)}")
    return kv_format


def quantized(base, name: str, kv_format: KVFormat):
    """Preset ``base`` named ``name``, its KV in ``kv_format`` unless given another: the same fields,
    ``kv_format``'s default changed (in the signature too, which ``kvlab bench`` records)."""
    signature = inspect.signature(base)

    def preset(kv_tokens: int, **fields) -> Preset:
        fields.setdefault("kv_format", kv_format)
        return dataclasses.replace(base(kv_tokens, **fields), name=name)

    preset.__signature__ = signature.replace(parameters=[
        p.replace(default=kv_format) if p.name == "kv_format" else p for p in signature.parameters.values()])
    preset.__name__ = preset.__qualname__ = name.replace("-", "_")
    preset.__doc__ = f"``{base.__name__}`` with its KV in ``{kv_format!r}`` (see ``QUANTIZED``)."
    return preset


vllm_fp8 = quantized(vllm, "vllm-fp8", Fp8E4M3(scales=CalibratedScales(granularity=PerTensor())))
"""vLLM with ``kv_cache_dtype="fp8"`` (e4m3 on CUDA) and ``calculate_kv_scales=True``: one scale
per layer for K (amax / 200) and one for V (amax / 100), from the first batch each layer stores.
vLLM's default without calibration is scales of 1.0: ``kv_format=Fp8E4M3(scales=StaticScales())``."""

lmdeploy_kv8 = quantized(lmdeploy, "lmdeploy-kv8", Int8())
"""LMDeploy TurboMind with ``quant_policy=8``: int8 KV, asymmetric, a float16 scale and zero point
per token and KV head computed online as each token is written (no calibration)."""

lmdeploy_kv4 = quantized(lmdeploy, "lmdeploy-kv4", Int4())
"""LMDeploy TurboMind with ``quant_policy=4``: the same scheme in 4 bits, two codes a byte."""

trtllm_fp8 = quantized(trtllm, "trtllm-fp8", Fp8E4M3(scales=CalibratedScales(granularity=PerTensor())))
"""TensorRT-LLM with FP8 KV (``KvCacheConfig(dtype="fp8")``; ``QuantAlgo.FP8`` KV): e4m3, one scale
per layer for K and one for V; TensorRT-LLM reads them from the checkpoint, here the first batch
sets them (``missing`` says so)."""

trtllm_int8 = quantized(trtllm, "trtllm-int8", Int8())
"""TensorRT-LLM with INT8 KV (``QuantAlgo.INT8`` KV, ``--int8_kv_cache``): kvlab's nearest format,
per-token asymmetric int8 (``missing`` says how it differs from TensorRT-LLM's per-tensor scale)."""

SEEDS = ("vllm", "sglang", "tgi", "lmdeploy", "trtllm", "deepspeed")
"""The six seed systems with their default configurations (what ``kvlab bench --preset all`` means)."""

QUANTIZED = {"vllm-fp8": vllm_fp8, "lmdeploy-kv8": lmdeploy_kv8, "lmdeploy-kv4": lmdeploy_kv4,
             "trtllm-fp8": trtllm_fp8, "trtllm-int8": trtllm_int8}
"""The seed systems' documented quantized-KV configurations, by preset name."""

PRESETS = {"vllm": vllm, "sglang": sglang, "tgi": tgi, "lmdeploy": lmdeploy, "trtllm": trtllm,
           "deepspeed": deepspeed, "static": static_batching, "custom": custom, **QUANTIZED}


def expand_names(names: list[str]) -> list[str]:
    """The preset names with ``all`` expanded to the six seed systems (``SEEDS``); unknown names
    raise a ValueError naming the known ones.

    Examples:
        >>> expand_names(["all", "vllm-fp8"])[-2:]
        ['deepspeed', 'vllm-fp8']
    """
    names = [n for p in names for n in (SEEDS if p == "all" else [p])]
    unknown = [p for p in names if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; known: all, {', '.join(PRESETS)}")
    return names
