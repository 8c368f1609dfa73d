"""Tensor parallelism (Megatron-style) over one axis of a ``jax.sharding.Mesh``: each device holds
its share of the attention heads and of the MLP's intermediate dimension, one all-reduce follows
the attention and one the MLP in every layer, the LM head is split over the vocabulary and its
logits gathered; the KV cache is split over its KV heads (``kvlab.parallel.heads`` lays the heads
out so every device gets whole KV heads). The model's step runs under ``jax.shard_map``, so the
attention backend (the Pallas kernels too) sees one device's heads. The host side (scheduler,
cache bookkeeping, global page ids) does not change.

Examples:
    >>> import jax, numpy as np
    >>> import kvlab
    >>> from kvlab.models import LlamaModel, ModelConfig
    >>> from kvlab.parallel import TensorParallel
    >>> mesh = jax.make_mesh((1,), ("tp",), devices=jax.devices()[:1])
    >>> model = TensorParallel(LlamaModel(ModelConfig.tiny(), seed=0), mesh)
    >>> engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=8, page_size=8), max_model_len=32)
    >>> len(engine.generate([[5, 6, 7]], kvlab.SamplingParams(max_tokens=3, ignore_eos=True))[0].token_ids)
    3
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.protocol import AttentionBackend
from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.models.config import ModelConfig
from kvlab.models.layer_loop import LayerLoop, default_layer_loop, stacked_name
from kvlab.models.llama import LlamaModel, weight_shapes
from kvlab.models.loading import read_checkpoint
from kvlab.models.qkv_rope import QKVRope
from kvlab.models.tokenizer import Tokenizer
from kvlab.parallel.heads import tp_config, tp_weights

# weights split along their last axis (output features) and along their input axis
COLUMN_SPLIT = frozenset({"wq", "wk", "wv", "bq", "bk", "bv", "w_gate", "w_up", "lm_head",
                          "w_qkv", "b_qkv", "w_gate_up"})
ROW_SPLIT = frozenset({"wo", "w_down"})


def weight_spec(name: str, ndim: int, axis: str) -> P:
    """How weight ``name`` (``ndim`` axes) is split over mesh axis ``axis``."""
    if name in COLUMN_SPLIT:
        return P(*([None] * (ndim - 1)), axis)
    if name in ROW_SPLIT:
        return P(*([None] * (ndim - 2)), axis, None)
    return P()


@dataclasses.dataclass(frozen=True)
class TensorShard:
    """One device's share under ``shard_map`` over mesh axis ``axis`` of ``size`` devices."""

    axis: str
    size: int

    def heads(self, num_heads: int) -> int:
        return num_heads // self.size

    def reduce(self, x: jax.Array) -> jax.Array:
        return jax.lax.psum(x, self.axis)

    def gather_vocab(self, logits: jax.Array) -> jax.Array:
        return jax.lax.all_gather(logits, self.axis, axis=1, tiled=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomInit:
    """Random weights (``LlamaModel``'s scheme: norms 1, the rest N(0, 0.02)) made on the devices."""

    config: ModelConfig
    dtype: jnp.dtype
    seed: int = 0

    def weights_on(self, laid_out: ModelConfig, mesh: Mesh, axis: str) -> dict[str, jax.Array]:
        """Every weight of ``laid_out``'s shapes, generated shard by shard over ``mesh``."""
        out = {}
        for i, (name, shape) in enumerate(weight_shapes(laid_out).items()):
            sharding = NamedSharding(mesh, weight_spec(name, len(shape), axis))
            key = jax.random.fold_in(jax.random.key(self.seed), i)
            if name.endswith("norm"):
                make = functools.partial(jnp.ones, shape, self.dtype)
                out[name] = jax.jit(make, out_shardings=sharding)()
            else:
                out[name] = jax.jit(lambda k, shape=shape: 0.02 * jax.random.normal(k, shape, self.dtype),
                                    out_shardings=sharding)(key)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostWeights:
    """Weights in host memory (``weight_shapes`` names, any float dtype), each cast to ``dtype``
    and re-laid out on the host, then sent to the devices split: a device receives only its
    share, and none ever holds a whole split weight."""

    config: ModelConfig
    dtype: jnp.dtype
    weights: dict[str, np.ndarray]

    def weights_on(self, laid_out: ModelConfig, mesh: Mesh, axis: str) -> dict[str, jax.Array]:
        """Every weight, re-laid out for ``laid_out`` (``tp_weights``) and split over ``mesh``."""
        host = tp_weights(self.weights, self.config, mesh.shape[axis])
        return {n: jax.device_put(np.asarray(w).astype(self.dtype, copy=False),
                                  NamedSharding(mesh, weight_spec(n, w.ndim, axis)))
                for n, w in host.items()}


class TensorParallel(nnx.Module):
    """``model`` split over ``mesh``'s axis ``axis``: its weights are re-laid out for the degree
    (``tp_weights``) and placed sharded from host memory, so no device holds more than its share.
    ``TensorParallel.random(config, mesh)`` makes random weights on the devices instead, and
    ``TensorParallel.load(name_or_path, mesh)`` reads a checkpoint and splits it as it goes.

    ``config`` is the laid-out config (padded or replicated KV heads are real heads of the cache).
    The intermediate size and, for an untied head, the vocabulary must divide by the degree.
    ``layer_loop`` runs the layers on each device (default ``default_layer_loop()``; a loop that
    keeps layers in host memory does not shard). ``qkv_rope`` makes each device's q, k and v
    (default: ``model``'s, or ``default_qkv_rope`` for the laid-out model).
    """

    def __init__(self, model: LlamaModel | None, mesh: Mesh, axis: str = "tp", *,
                 layer_loop: LayerLoop | None = None, init: RandomInit | HostWeights | None = None,
                 qkv_rope: QKVRope | None = None):
        if axis not in mesh.shape:
            raise ValueError(f"the mesh has no axis {axis!r}; its axes: {tuple(mesh.shape)}")
        if (model is None) == (init is None):
            raise TypeError("TensorParallel takes a model, or (through TensorParallel.random or "
                            "TensorParallel.load) a source of weights")
        source = init or HostWeights(config=model.config, dtype=model.dtype, weights=model.host_weights())
        degree = mesh.shape[axis]
        config = tp_config(source.config, degree)
        splits = {"intermediate_size": config.intermediate_size}
        if not config.tie_word_embeddings:
            splits["vocab_size"] = config.vocab_size
        for field, size in splits.items():
            if size % degree:
                raise ValueError(f"{field}={size} does not split over {degree} devices")
        weights = source.weights_on(config, mesh, axis)
        self.inner = LlamaModel(config, dtype=source.dtype, weights=weights,
                                layer_loop=layer_loop or default_layer_loop(), projection_parts=degree,
                                qkv_rope=qkv_rope or (model.qkv_rope if model is not None else None))
        self.config, self.dtype, self.mesh, self.axis = config, source.dtype, mesh, axis
        graphdef, state = nnx.split(self.inner)     # the fused weights, placed as the step reads them
        specs = self._weight_specs(state)
        nnx.update(self.inner, jax.device_put(state, jax.tree.map(lambda s: NamedSharding(mesh, s), specs)))

    @classmethod
    def random(cls, config: ModelConfig, mesh: Mesh, axis: str = "tp", *, dtype=jnp.float32, seed: int = 0,
               layer_loop: LayerLoop | None = None, qkv_rope: QKVRope | None = None) -> TensorParallel:
        """A random-weight model of ``config``'s shape (heads laid out for the degree), each device
        generating only its share: shapes too large for one device (a Llama-3-70B in bf16)."""
        return cls(None, mesh, axis, layer_loop=layer_loop, qkv_rope=qkv_rope,
                   init=RandomInit(config=config, dtype=jnp.dtype(dtype), seed=seed))

    @classmethod
    def load(cls, name_or_path: str, mesh: Mesh, axis: str = "tp", *, dtype=jnp.float32,
             layer_loop: LayerLoop | None = None, qkv_rope: QKVRope | None = None
             ) -> tuple[TensorParallel, Tokenizer | None]:
        """(model, tokenizer) of a checkpoint (the names and paths ``kvlab.models.load`` takes),
        read into host memory and sent to the devices split, weight by weight: a checkpoint
        larger than one device loads."""
        config, weights, tokenizer = read_checkpoint(name_or_path)
        source = HostWeights(config=config, dtype=jnp.dtype(dtype), weights=weights)
        return cls(None, mesh, axis, layer_loop=layer_loop, qkv_rope=qkv_rope, init=source), tokenizer

    @property
    def attention_options(self) -> AttentionOptions:
        return self.inner.attention_options

    def _weight_specs(self, state):
        def spec(path, leaf):
            return weight_spec(stacked_name(str(path[0].key)), leaf.ndim, self.axis)
        return jax.tree_util.tree_map_with_path(spec, state)

    def __call__(self, batch: RaggedBatch, storage, attention: AttentionBackend,
                 options: AttentionOptions | None = None):
        """``LlamaModel.__call__`` under ``shard_map``: (logits [S, V], storage), both global."""
        graphdef, state = nnx.split(self.inner)
        shard = TensorShard(self.axis, self.mesh.shape[self.axis])
        storage_specs = storage.head_specs(self.axis)

        def per_device(state, batch, storage):
            return nnx.merge(graphdef, state)(batch, storage, attention, options, shard)

        return jax.shard_map(per_device, mesh=self.mesh,
                             in_specs=(self._weight_specs(state), P(), storage_specs),
                             out_specs=(P(), storage_specs), check_vma=False)(state, batch, storage)

    def place_kv(self, storage):
        """``storage`` split over the mesh by its KV heads."""
        specs = storage.head_specs(self.axis)
        return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(self.mesh, s)), storage, specs)

    def dense_logits(self, tokens: jax.Array, options: AttentionOptions | None = None,
                     kv_format: KVFormat = PLAIN) -> jax.Array:
        """The one-sequence reference forward of the laid-out model (XLA partitions it)."""
        return self.inner.dense_logits(tokens, options, kv_format)
