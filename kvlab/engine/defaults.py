"""What ``Engine(model)`` builds when the caller names no cache or scheduler: vLLM's defaults.

* Scheduler: ``ChunkedScheduler()`` (chunked prefill, vLLM's default scheduler).
* Cache: a ``PagedKVCache`` (page 16) holding as many tokens as the device's free memory allows
  after ``memory_utilization`` of it (vLLM's ``gpu_memory_utilization`` habit: the weights are
  already resident, so what is left under the fraction goes to KV), never more than the
  scheduler could ever use (``max_num_seqs`` sequences of ``max_model_len`` tokens). A device
  that reports no memory statistics (the CPU) gets ``HOST_KV_BYTES`` (4 GiB, vLLM's default CPU
  KV space).

Examples:
    >>> from kvlab.models import ModelConfig
    >>> kv_bytes_per_token(ModelConfig.tiny(), "float32")        # 2 layers x K,V x 2 heads x 16 x 4 B
    512
"""

from __future__ import annotations

import jax

from kvlab.kvcache.formats.base import PLAIN, KVFormat, bytes_per_token
from kvlab.kvcache.paged import PagedKVCache

HOST_KV_BYTES = 4 << 30


def kv_bytes_per_token(config, dtype, kv_format: KVFormat = PLAIN) -> int:
    """Bytes of K and V one token takes over all layers, stored in ``kv_format`` (data and
    scales: a byte budget holds about 2x the tokens in fp8 or int8, 3.6x in int4)."""
    return bytes_per_token(kv_format, num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
                           head_dim=config.head_dim, model_dtype=dtype)


def free_kv_bytes(memory_utilization: float = 0.9, device=None) -> int:
    """Bytes a KV cache may take on ``device`` (default: JAX's first device)."""
    if not 0.0 < memory_utilization <= 1.0:
        raise ValueError(f"memory_utilization must be in (0, 1], got {memory_utilization}")
    stats = (device or jax.devices()[0]).memory_stats()
    if not stats or "bytes_limit" not in stats:
        return HOST_KV_BYTES
    return int(stats["bytes_limit"] * memory_utilization) - int(stats.get("bytes_in_use", 0))


def default_cache(model, *, max_model_len: int, max_num_seqs: int, memory_utilization: float = 0.9,
                  page_size: int = 16, kv_format: KVFormat = PLAIN) -> PagedKVCache:
    """A paged cache sized from the device's free memory (see the module docstring), its pages
    in ``kv_format``."""
    per_token = kv_bytes_per_token(model.config, model.dtype, kv_format)
    budget = free_kv_bytes(memory_utilization)
    tokens = min(budget // per_token, max_num_seqs * max_model_len)
    if tokens < max_model_len:
        raise ValueError(f"the device has room for {max(0, tokens)} tokens of KV cache ({budget / 2**30:.2f} "
                         f"GiB free under memory_utilization={memory_utilization}, {per_token} bytes a "
                         f"token), less than one sequence of max_model_len={max_model_len}; pass a "
                         f"smaller max_model_len or your own cache=")
    return PagedKVCache.for_tokens(int(tokens), page_size=page_size, kv_format=kv_format)
