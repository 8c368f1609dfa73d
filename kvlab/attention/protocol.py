"""The attention backend contract: FlashInfer's plan once per step, run once per layer.

A step of the engine goes through a backend in four calls:

1. ``specialize(batch)`` on the host, before the jitted step: the batch's static flags
   (``decode_only``, ``has_decodes``) stay exact only where the backend compiles different programs
   for them, and are fixed to one value otherwise, so a flag the backend ignores never costs a
   compilation.
2. ``plan(batch, storage, options, query)`` inside the jitted step, once, before the layer scan:
   everything the layers share (work lists, split factors, masks, static choices) in one pytree.
3. ``write_kv(storage, layer, k_new, v_new, slots)`` per layer: the layer's new K/V into the cache.
4. ``run(q, storage, layer, plan)`` per layer: the attention of every scheduled token.

``backend(q, storage, layer, batch, options)`` is the one-shot convenience
``run(q, storage, layer, plan(batch, storage, options, <q's shape and dtype>))``. ``check`` runs
when an engine is built and raises, naming the limit, for what the backend cannot serve.
Backends are frozen, hashable objects (static arguments of the compiled step).
"""

from __future__ import annotations

from typing import Protocol

import jax

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.storage import KVStorage


class AttentionPlan(Protocol):
    """A backend's per-step plan: a pytree (arrays as leaves, static choices as aux data) built
    by ``plan`` inside the jitted step and read by every layer's ``run``. Each backend defines
    its own; every plan holds at least the batch and the options it was made for."""

    batch: RaggedBatch
    options: AttentionOptions


class AttentionBackend(Protocol):
    """Ragged paged attention behind plan/run (see the module docstring for the call order).

    Shapes: q ``[T, Hq, D]``; storage: a ``KVStorage`` (all layers; kernels take the whole arrays
    plus the layer index); layer: int32 scalar; k_new, v_new ``[T, Hkv, D]``; slots ``[T]`` int32
    flat ``page * page_size + offset`` (negative: padding); output ``[T, Hq, D]`` in q's dtype,
    the contract of ``kvlab.attention.reference.ragged_paged_attention`` (padding rows zeros).
    """

    name: str

    def check(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, page_size: int, dtype,
              kv_format: KVFormat = PLAIN) -> None:
        """Raise a ValueError naming the limit when this backend cannot serve the model and cache."""
        ...

    def specialize(self, batch: RaggedBatch) -> RaggedBatch:
        """Host side, before the jitted step: ``batch`` with the static flags this backend does
        not compile separate programs for fixed to one value (the others kept exact)."""
        ...

    def plan(self, batch: RaggedBatch, storage: KVStorage, options: AttentionOptions,
             query: jax.ShapeDtypeStruct) -> AttentionPlan:
        """Once per step, inside the jitted step: what every layer's ``run`` shares. ``query``:
        the shape ``[T, Hq, D]`` and dtype of the queries ``run`` will get (only its statics)."""
        ...

    def write_kv(self, storage: KVStorage, layer, k_new: jax.Array, v_new: jax.Array,
                 slots: jax.Array) -> KVStorage:
        """One layer's new K/V ``[T, Hkv, D]`` into ``slots [T]``; returns the storage."""
        ...

    def run(self, q: jax.Array, storage: KVStorage, layer, plan: AttentionPlan) -> jax.Array:
        """Per layer: q ``[T, Hq, D]`` -> ``[T, Hq, D]``, attention over ``layer`` of the cache."""
        ...

    def __call__(self, q: jax.Array, storage: KVStorage, layer, batch: RaggedBatch,
                 options: AttentionOptions) -> jax.Array:
        """One-shot: ``run(q, storage, layer, plan(batch, storage, options, <q's spec>))``."""
        ...


def query_spec(q: jax.Array) -> jax.ShapeDtypeStruct:
    """The ``query`` argument of ``plan`` for queries ``q`` (their shape and dtype only)."""
    return jax.ShapeDtypeStruct(q.shape, q.dtype)
