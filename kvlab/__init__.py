"""kvlab: composable LLM inference components in JAX (KV caches, schedulers, attention kernels).

Quick start:
    llm = kvlab.LLM("smollm2-135m")                       # a model behind a default engine
    print(llm.chat("Why is the sky blue?", kvlab.SamplingParams(max_tokens=32))[0].text)

    model, tokenizer = kvlab.models.load("smollm2-135m")  # or compose the engine yourself
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=256), tokenizer=tokenizer)
    print(engine.generate("Hello", kvlab.SamplingParams(max_tokens=32))[0].text)
"""

from kvlab import models
from kvlab.attention import ReferenceAttention
from kvlab.attention.pallas import DecodeConfig, PallasAttention, PrefillConfig
from kvlab.engine import Completion, Engine, Sampler, StreamEvent
from kvlab.kvcache import (
    LFU,
    LRU,
    BlockedKVCache,
    CircularKVCache,
    ContiguousKVCache,
    HostTier,
    PagedKVCache,
    PriorityLRU,
    RadixKVCache,
)
from kvlab.llm import LLM
from kvlab.schedulers import (
    FCFS,
    ChunkedScheduler,
    ContinuousScheduler,
    LongestPrefixMatch,
    PersistentScheduler,
    Priority,
    RecomputePreemption,
    ReserveAdmission,
    SamplingParams,
    StaticBatchAdmission,
    SwapPreemption,
)

__version__ = "0.1.0"
__all__ = ["FCFS", "LFU", "LRU", "BlockedKVCache", "ChunkedScheduler", "CircularKVCache", "Completion",
           "ContiguousKVCache", "ContinuousScheduler", "DecodeConfig", "Engine", "HostTier", "LLM",
           "LongestPrefixMatch", "PagedKVCache", "PallasAttention", "PersistentScheduler", "PrefillConfig",
           "Priority", "PriorityLRU", "RadixKVCache", "RecomputePreemption", "ReferenceAttention",
           "ReserveAdmission", "Sampler", "SamplingParams", "StaticBatchAdmission", "StreamEvent",
           "SwapPreemption", "models"]
