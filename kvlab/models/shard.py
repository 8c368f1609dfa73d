"""What one device's share of a model's computation is, and how the shares combine: the model's
forward takes a ``ModelShard`` and asks it for its share of the heads and to combine the partial
results of the layers it splits. ``WholeModel`` is the one-device case (all heads, nothing to
combine); ``kvlab.parallel.TensorShard`` is a tensor-parallel shard (Megatron-style: heads and the
MLP's intermediate dimension split, an all-reduce after attention and after the MLP, the LM head
split over the vocabulary).

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab.models.shard import WHOLE_MODEL
    >>> WHOLE_MODEL.heads(32), WHOLE_MODEL.reduce(jnp.ones(2)).tolist()
    (32, [1.0, 1.0])
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax


class ModelShard(Protocol):
    """One device's share of a model."""

    def heads(self, num_heads: int) -> int:
        """How many of ``num_heads`` (query or KV) heads this shard computes."""
        ...

    def reduce(self, x: jax.Array) -> jax.Array:
        """The sum over the shards of a layer's partial output (after the attention's output
        projection and after the MLP's down projection): ``x [T, E]`` -> ``[T, E]``."""
        ...

    def gather_vocab(self, logits: jax.Array) -> jax.Array:
        """Logits of this shard's slice of the vocabulary ``[S, V / n]`` -> all of them ``[S, V]``."""
        ...


@dataclasses.dataclass(frozen=True)
class WholeModel:
    """The whole model on one device."""

    def heads(self, num_heads: int) -> int:
        return num_heads

    def reduce(self, x: jax.Array) -> jax.Array:
        return x

    def gather_vocab(self, logits: jax.Array) -> jax.Array:
        return logits


WHOLE_MODEL = WholeModel()
