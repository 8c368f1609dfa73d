"""The seed systems as compositions of kvlab parts: each preset is a few readable lines.

A preset gets a KV capacity in tokens and returns a fresh ``Preset`` (cache + scheduler, single
use). Where kvlab lacks a part the system has, the preset says so in ``missing`` instead of
substituting silently; ``Preset.engine(model)`` builds the engine.

Defaults follow each system's documented defaults (see ``../shared/ANCHORS.md``); every knob can be
overridden, e.g. a smaller token budget for a CPU run.

Examples:
    >>> p = vllm(kv_tokens=4096, max_num_seqs=8)
    >>> type(p.cache).__name__, p.cache.page_size, p.scheduler.max_num_batched_tokens, p.missing
    ('PagedKVCache', 16, 2048, ())
    >>> deepspeed(kv_tokens=4096).missing[0][:21]
    'ZeRO-Inference weight'
"""

from __future__ import annotations

import dataclasses

from kvlab.bench.custom import custom
from kvlab.kvcache import (
    BlockedKVCache,
    CircularKVCache,
    ContiguousKVCache,
    HostTier,
    PagedKVCache,
    PriorityLRU,
    RadixKVCache,
)
from kvlab.schedulers import ChunkedScheduler, ContinuousScheduler, LongestPrefixMatch, PersistentScheduler
from kvlab.schedulers.admission import ReserveAdmission, StaticBatchAdmission


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """A composition: its cache and scheduler (fresh objects: one engine each), and what of the
    original system kvlab does not have yet."""

    name: str
    cache: object
    scheduler: object
    missing: tuple[str, ...] = ()

    def engine(self, model, **engine_kwargs):
        """``kvlab.Engine(model, cache=..., scheduler=..., **engine_kwargs)``."""
        from kvlab.engine import Engine

        return Engine(model, cache=self.cache, scheduler=self.scheduler, **engine_kwargs)


def vllm(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 2048, page_size: int = 16
         ) -> Preset:
    """vLLM v1: paged per-layer pools, hash-chained prefix cache, chunked prefill with a 2048-token
    budget, FCFS, preemption by recompute."""
    return Preset(name="vllm",
                  cache=PagedKVCache(num_pages=kv_tokens // page_size, page_size=page_size,
                                     prefix_caching=True),
                  scheduler=ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget))


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


def lmdeploy(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 8192, block_tokens: int = 128
             ) -> Preset:
    """LMDeploy TurboMind: blocks spanning all layers (prefix reuse on), persistent batch: fixed
    slots and a fixed per-step token budget (one compiled shape)."""
    return Preset(name="lmdeploy",
                  cache=BlockedKVCache(num_blocks=kv_tokens // block_tokens, block_tokens=block_tokens),
                  scheduler=PersistentScheduler(num_slots=max_num_seqs, tokens_per_step=token_budget),
                  missing=("online int8/int4 KV quantization: the KV is kept in the model's dtype",))


def trtllm(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 8192,
           tokens_per_block: int = 64, host_tokens: int = 0, window: int | None = None,
           num_sink_tokens: int = 0) -> Preset:
    """TensorRT-LLM: paged blocks with reuse under priority LRU, an optional host tier, in-flight
    batching with GUARANTEED_NO_EVICT admission; with ``window``, the cyclic KV cache instead."""
    if window is not None:
        cache = CircularKVCache(num_pages=kv_tokens // tokens_per_block, page_size=tokens_per_block,
                                window=window, num_sink_tokens=num_sink_tokens, max_step_tokens=token_budget)
    else:
        host = HostTier(host_tokens // tokens_per_block) if host_tokens else None
        cache = PagedKVCache(num_pages=kv_tokens // tokens_per_block, page_size=tokens_per_block,
                             prefix_caching=True, eviction=PriorityLRU(), host_tier=host)
    return Preset(name="trtllm", cache=cache,
                  scheduler=ContinuousScheduler(max_num_seqs=max_num_seqs,
                                                max_num_batched_tokens=token_budget,
                                                admission=ReserveAdmission()),
                  missing=("fp8/int8 KV", "evicted prefix blocks kept in the host tier for reuse "
                           "(kvlab's host tier holds swapped-out sequences only)"))


def deepspeed(kv_tokens: int, *, max_num_seqs: int = 256, token_budget: int = 768, block_tokens: int = 64
              ) -> Preset:
    """DeepSpeed-FastGen: blocked KV and Dynamic SplitFuse, a fixed token budget per forward pass
    filled by decodes first and prompt chunks after."""
    return Preset(name="deepspeed",
                  cache=PagedKVCache(num_pages=kv_tokens // block_tokens, page_size=block_tokens),
                  scheduler=ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget),
                  missing=("ZeRO-Inference weight offload to host, streamed per layer: the weights stay "
                           "on the device",))


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


PRESETS = {"vllm": vllm, "sglang": sglang, "tgi": tgi, "lmdeploy": lmdeploy, "trtllm": trtllm,
           "deepspeed": deepspeed, "static": static_batching, "custom": custom}
