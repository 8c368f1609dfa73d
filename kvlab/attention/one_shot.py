"""A base for backends written as one call per layer (no per-step work to share).

Subclass ``OneShotAttention`` and write ``check`` and ``__call__(q, storage, layer, batch,
options)``; it supplies the rest of the contract (``kvlab.attention.protocol.AttentionBackend``):
``specialize`` fixes both static flags (one program for every step), ``plan`` only carries the
batch and options (``BatchPlan``), ``run`` calls ``__call__``, and ``write_kv`` is the storage's
own scatter.
"""

from __future__ import annotations

import abc
import dataclasses

import jax

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, KVFormat


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The plan of a backend with nothing to share across layers: the batch and the options."""

    batch: RaggedBatch
    options: AttentionOptions = dataclasses.field(metadata=dict(static=True))


class OneShotAttention(abc.ABC):
    """Plan/run around a per-layer ``__call__`` (see the module docstring)."""

    name: str = "one-shot"

    @abc.abstractmethod
    def check(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, page_size: int, dtype,
              kv_format: KVFormat = PLAIN) -> None:
        """Raise a ValueError naming the limit for what this backend cannot serve."""

    @abc.abstractmethod
    def __call__(self, q: jax.Array, storage, layer, batch: RaggedBatch,
                 options: AttentionOptions) -> jax.Array:
        """q [T, Hq, D] -> [T, Hq, D] over ``layer`` of ``storage`` (the reference's contract)."""

    def specialize(self, batch: RaggedBatch) -> RaggedBatch:
        """One program for every step: ``decode_only=False, has_decodes=True``."""
        return dataclasses.replace(batch, decode_only=False, has_decodes=True)

    def plan(self, batch: RaggedBatch, storage, options: AttentionOptions,
             query: jax.ShapeDtypeStruct) -> BatchPlan:
        """Nothing to precompute: the batch and options for every layer."""
        return BatchPlan(batch=batch, options=options)

    def write_kv(self, storage, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array):
        """The storage's own scatter of k_new, v_new [T, Hkv, D] into ``slots`` [T]."""
        return storage.write(layer, k_new, v_new, slots)

    def run(self, q: jax.Array, storage, layer, plan: BatchPlan) -> jax.Array:
        """``__call__`` with the plan's batch and options."""
        return self(q, storage, layer, plan.batch, plan.options)
