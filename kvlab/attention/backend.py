"""Attention backends: small strategy objects the model calls once per layer.

A backend is a callable ``backend(q, storage, layer, batch, options) -> out`` with
q: [T, Hq, D], storage: ``PagedKVStorage`` or ``BlockedKVStorage`` (all layers), layer: int
scalar, batch: ``RaggedBatch``; and ``backend.write_kv(storage, layer, k, v, slots) -> storage``
puts a layer's new K/V into the cache before the attention reads it. A backend whose class sets
``splits_prefill_only_steps = True`` gets the batch's static ``has_decodes`` flag exact (one
compilation per value); for any other backend the engine's runner fixes it to True, so no extra
variant compiles.
The GPU kernels (``kvlab.attention.pallas.PallasAttention``) sit beside ``ReferenceAttention``
behind the same two calls.
"""

from __future__ import annotations

import dataclasses

import jax

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.reference import AttentionOptions, attend_pages


@dataclasses.dataclass(frozen=True)
class ReferenceAttention:
    """The plain-jnp specification as a backend: gathers each query row's pages; memory
    O(T x max_kv_len). Right on every device, fast on none; the CPU default."""

    name: str = "reference"

    def write_kv(self, storage, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array):
        """k_new, v_new: [T, Hkv, D] into flat ``slots`` [T] (negative: padding) of one layer."""
        return storage.write(layer, k_new, v_new, slots)

    def check(self, **shapes) -> None:
        """Every shape and dtype is supported (see ``PallasAttention.check``)."""

    def __call__(self, q: jax.Array, storage, layer, batch: RaggedBatch,
                 options: AttentionOptions) -> jax.Array:
        return attend_pages(q, lambda pages: storage.gather_pages(layer, pages), storage.page_size,
                            storage.num_kv_heads, batch.cu_q_lens, batch.kv_lens, batch.page_table,
                            batch.num_seqs, options)
