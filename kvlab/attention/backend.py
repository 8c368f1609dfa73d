"""Attention backends: small strategy objects the model calls once per layer.

A backend is a callable ``backend(q, storage, layer, batch, options) -> out`` with
q: [T, Hq, D], storage: ``PagedKVStorage`` (all layers), layer: int scalar, batch: ``RaggedBatch``.
GPU kernels (Pallas) will sit beside ``ReferenceAttention`` behind the same call.
"""

from __future__ import annotations

import dataclasses

import jax

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.reference import AttentionOptions, ragged_paged_attention


@dataclasses.dataclass(frozen=True)
class ReferenceAttention:
    """The plain-jnp specification as a backend: gathers each query row's pages; memory
    O(T x max_kv_len). Right on every device, fast on none; the CPU default."""

    name: str = "reference"

    def __call__(self, q: jax.Array, storage, layer, batch: RaggedBatch,
                 options: AttentionOptions) -> jax.Array:
        return ragged_paged_attention(q, storage.k, storage.v, layer, batch.cu_q_lens,
                                      batch.kv_lens, batch.page_table, batch.num_seqs, options)
