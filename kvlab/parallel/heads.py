"""Attention heads laid out for a tensor-parallel degree: every shard gets whole KV heads with
their own query heads.

With ``H`` query heads in ``K`` groups of ``g = H / K`` and a degree ``n``:

* ``n`` divides ``K``: nothing changes; shard ``s`` holds KV heads ``[s K/n, (s+1) K/n)``;
* ``K`` divides ``n`` (more shards than KV heads) and ``n / K`` divides ``g``: each KV head is
  replicated ``r = n / K`` times and each copy serves ``g / r`` of its query heads (as vLLM and
  Megatron do); the query heads keep their order;
* otherwise (``K = 3``, ``n = 2``: SmolLM2): KV heads are padded with zero heads up to the next
  multiple of ``n``, each with ``g`` zero query heads. A zero query head attends uniformly to zero
  values and its output projection rows are zero, so the padding adds nothing to the output.

Either way the KV cache holds the new number of KV heads (replicated or padded heads cost their
memory: docs/parallel.md).

Examples:
    >>> from kvlab.models import ModelConfig
    >>> tp_heads(ModelConfig.tiny(), 4)              # 4 query heads, 2 KV heads: KV replicated twice
    (4, 4, 2)
    >>> tp_heads(ModelConfig.smollm2_135m(), 2)      # 9 query heads, 3 KV heads: padded to 12 and 4
    (12, 4, 1)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvlab.models.config import ModelConfig


def tp_heads(config: ModelConfig, degree: int) -> tuple[int, int, int]:
    """(query heads, KV heads, replicas per KV head) of ``config`` laid out for ``degree`` shards."""
    heads, kv = config.num_heads, config.num_kv_heads
    group = heads // kv
    if kv % degree == 0:
        return heads, kv, 1
    if degree % kv == 0 and group % (degree // kv) == 0:
        return heads, degree, degree // kv
    padded = -(-kv // degree) * degree
    return padded * group, padded, 1


def tp_config(config: ModelConfig, degree: int) -> ModelConfig:
    """``config`` with the head counts of ``tp_heads``."""
    heads, kv, _ = tp_heads(config, degree)
    return dataclasses.replace(config, num_heads=heads, num_kv_heads=kv)


def _heads_axis(w: np.ndarray, axis: int, head_dim: int, fn) -> np.ndarray:
    """``fn`` applied to ``w`` with ``axis`` split into ``[heads, head_dim]`` (heads first)."""
    axis = axis % w.ndim
    shape = w.shape
    split = w.reshape(*shape[:axis], shape[axis] // head_dim, head_dim, *shape[axis + 1:])
    out = fn(split, axis)
    return out.reshape(*shape[:axis], -1, *shape[axis + 1:])


def _pad(x: np.ndarray, axis: int, to: int) -> np.ndarray:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, to - x.shape[axis])
    return np.pad(x, widths)


def tp_weights(weights: dict[str, np.ndarray], config: ModelConfig, degree: int) -> dict[str, np.ndarray]:
    """The weights (kvlab names, ``x @ w`` layout) with their heads laid out by ``tp_heads``."""
    heads, kv, replicas = tp_heads(config, degree)
    d = config.head_dim
    out = dict(weights)

    def kv_heads(x, axis):
        return _pad(np.repeat(x, replicas, axis=axis), axis, kv)

    def q_heads(x, axis):
        return _pad(x, axis, heads)

    for name, axis, fn in (("wq", -1, q_heads), ("bq", -1, q_heads), ("wo", -2, q_heads),
                           ("wk", -1, kv_heads), ("wv", -1, kv_heads), ("bk", -1, kv_heads),
                           ("bv", -1, kv_heads)):
        if name in weights:
            out[name] = _heads_axis(np.asarray(weights[name]), axis, d, fn)
    return out
