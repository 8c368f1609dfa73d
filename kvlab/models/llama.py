"""A Llama-family decoder in Flax NNX: RMSNorm, RoPE, GQA, SwiGLU, stacked layer weights run by a
layer loop (``kvlab.models.layer_loop``: a ``lax.scan``, or unrolled on GPUs).

Two forward passes share one layer body:
  * ``model(batch, storage, attention)`` - the serving path: a flat ragged batch of scheduled
    tokens, each layer's new K/V written into the paged cache, attention by the given backend,
    logits only for ``batch.logits_indices``;
  * ``model.dense_logits(tokens)`` - one sequence, plain causal attention, no cache: the
    one-request-at-a-time reference that the engine's outputs are tested against.

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab.models import LlamaModel, ModelConfig
    >>> model = LlamaModel(ModelConfig.tiny(), seed=0)
    >>> model.dense_logits(jnp.array([1, 5, 7])).shape
    (3, 256)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.protocol import AttentionBackend
from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.models.config import ModelConfig
from kvlab.models.fused_projections import fuse, split_columns, unfuse
from kvlab.models.layer_loop import LayerLoop, default_layer_loop
from kvlab.models.qkv_rope import JnpQKVRope, QKVRope, default_qkv_rope
from kvlab.models.shard import WHOLE_MODEL, ModelShard


def layer_weight_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The stacked per-layer weights by kvlab name, ``[L, ...]`` shapes (x @ w layout: [in, out])."""
    L, E, F = c.num_layers, c.hidden_size, c.intermediate_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes = {"attn_norm": (L, E), "wq": (L, E, q), "wk": (L, E, kv), "wv": (L, E, kv),
              "wo": (L, q, E), "mlp_norm": (L, E), "w_gate": (L, E, F), "w_up": (L, E, F),
              "w_down": (L, F, E)}
    if c.attention_bias:
        shapes.update(bq=(L, q), bk=(L, kv), bv=(L, kv))
    return shapes


def weight_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of the model by kvlab name, with its shape."""
    shapes = {"embed": (c.vocab_size, c.hidden_size), **layer_weight_shapes(c),
              "final_norm": (c.hidden_size,)}
    if not c.tie_word_embeddings:
        shapes["lm_head"] = (c.hidden_size, c.vocab_size)
    return shapes


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x: [..., E]; normalised in float32, then scaled (transformers' order of operations)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * x32.astype(x.dtype)


def dense_causal_attention(q, k, v, options: AttentionOptions, stored=None):
    """One sequence, no cache. q: [N, Hq, D], k, v: [N, Hkv, D] -> [N, Hq, D]. ``stored``: a KV
    format's ``dense_view`` ``(k_stored, v_stored, stored_from [N])``: query ``i`` reads key ``j``
    from ``k_stored``/``v_stored`` iff ``i >= stored_from[j]``."""
    n, hkv = q.shape[0], k.shape[1]
    qg = rearrange(q, "i (k g) d -> i k g d", k=hkv).astype(jnp.float32)
    scores = jnp.einsum("ikgd,jkd->kgij", qg, k.astype(jnp.float32)) * options.sm_scale
    if stored is not None:
        k_st, v_st, stored_from = stored
        use = jnp.arange(n)[:, None] >= stored_from[None, :]                     # [i, j]
        scores = jnp.where(use, jnp.einsum("ikgd,jkd->kgij", qg, k_st.astype(jnp.float32)) * options.sm_scale,
                           scores)
    if options.soft_cap is not None:
        scores = options.soft_cap * jnp.tanh(scores / options.soft_cap)
    i = jnp.arange(n)[:, None]
    j = jnp.arange(n)[None, :]
    mask = j <= i
    if options.sliding_window is not None:
        keep = i - j < options.sliding_window
        if options.num_sink_tokens:
            keep = keep | (j < options.num_sink_tokens)
        mask = mask & keep
    scores = jnp.where(mask, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    if stored is None:
        out = jnp.einsum("kgij,jkd->ikgd", probs, v.astype(jnp.float32))
    else:
        out = (jnp.einsum("kgij,jkd->ikgd", jnp.where(use, probs, 0.0), v_st.astype(jnp.float32))
               + jnp.einsum("kgij,jkd->ikgd", jnp.where(use, 0.0, probs), v.astype(jnp.float32)))
    return rearrange(out, "i k g d -> i (k g) d").astype(q.dtype)


class LlamaModel(nnx.Module):
    """Llama/SmolLM2/Qwen2/Mistral decoder with stacked layer weights.

    Built with random weights (``seed``) or from a dict of arrays named as ``weight_shapes``.
    ``layer_loop`` places the stacked layer weights and runs the layers (default:
    ``default_layer_loop()``, all on the device, unrolled on GPUs; ``StreamedLayers`` offloads).
    q/k/v and gate/up are kept fused (``kvlab.models.fused_projections``), laid out in
    ``projection_parts`` column blocks (the tensor-parallel degree; 1 on one device).
    ``qkv_rope`` splits the q/k/v projection and rotates q and k (``kvlab.models.qkv_rope``;
    default: ``default_qkv_rope``, one Pallas kernel on GPUs).
    """

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, seed: int = 0,
                 weights: dict[str, np.ndarray] | None = None, layer_loop: LayerLoop | None = None,
                 projection_parts: int = 1, qkv_rope: QKVRope | None = None):
        self.config = config
        self.projection_parts = projection_parts
        self.layer_loop = layer_loop or default_layer_loop()
        self.qkv_rope = qkv_rope or default_qkv_rope(
            head_dim=config.head_dim, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
            parts=projection_parts)
        self.dtype = jnp.dtype(dtype)
        shapes = weight_shapes(config)
        if weights is not None:
            missing = sorted(set(shapes) - set(weights))
            if missing:
                raise ValueError(f"weights are missing {missing}")
            for name, shape in shapes.items():
                if tuple(weights[name].shape) != shape:
                    raise ValueError(f"weight {name!r} has shape {tuple(weights[name].shape)}, "
                                     f"expected {shape}")
        keys = iter(jax.random.split(jax.random.key(seed), len(shapes)))
        per_layer = layer_weight_shapes(config)
        stacked = {}
        for name, shape in shapes.items():
            key = next(keys)
            if weights is not None:
                value = weights[name]
            elif name.endswith("norm"):
                value = jnp.ones(shape, self.dtype)
            else:
                value = (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(self.dtype)
            if name in per_layer:
                stacked[name] = value
            else:
                setattr(self, name, nnx.Param(jnp.asarray(value, dtype=self.dtype)))
        placed = self.layer_loop.place(fuse(stacked, projection_parts), self.dtype)
        for name, value in placed.items():
            setattr(self, name, nnx.Param(value))
        self.placed_names = tuple(placed)
        self.inv_freq = nnx.Variable(jnp.asarray(config.rope_inv_freq(), jnp.float32))

    def host_weights(self) -> dict[str, np.ndarray]:
        """Every weight by its ``weight_shapes`` name, copied to host memory."""
        per_layer = layer_weight_shapes(self.config)
        weights = {n: np.asarray(getattr(self, n)[...])
                   for n in weight_shapes(self.config) if n not in per_layer}
        stacked = self.layer_loop.stacked({n: getattr(self, n)[...] for n in self.placed_names})
        widths = {n: shape[-1] for n, shape in layer_weight_shapes(self.config).items()}
        weights.update(unfuse(stacked, widths, self.projection_parts))
        return weights

    def with_layer_loop(self, layer_loop: LayerLoop) -> LlamaModel:
        """The same model (config, dtype, weights) with its layers placed and run by ``layer_loop``;
        the weights pass through host memory."""
        return LlamaModel(self.config, dtype=self.dtype, weights=self.host_weights(), layer_loop=layer_loop,
                          projection_parts=self.projection_parts, qkv_rope=self.qkv_rope)

    # ------------------------------------------------------------------------------------------
    @property
    def attention_options(self) -> AttentionOptions:
        return AttentionOptions(sm_scale=self.config.head_dim ** -0.5,
                                sliding_window=self.config.sliding_window)

    def _rope(self, positions: jax.Array):
        angles = positions.astype(jnp.float32)[:, None] * self.inv_freq[...][None, :]
        return jnp.cos(angles), jnp.sin(angles)

    def _layers(self, x, positions, mix, mix_state, shard: ModelShard, qkv_rope: QKVRope):
        """Run all layers. ``mix(q, k, v, layer, state) -> (attn_out, state)`` does the attention
        of ``shard``'s heads; ``qkv_rope`` makes q, k and v of the fused projection."""
        c = self.config
        num_heads, num_kv_heads = shard.heads(c.num_heads), shard.heads(c.num_kv_heads)
        parts = self.projection_parts * num_heads // c.num_heads      # column blocks this shard sees
        cos, sin = self._rope(positions)
        placed = {n: getattr(self, n)[...] for n in self.placed_names}
        n_tok = x.shape[0]

        def body(carry, xs):
            h_in, state = carry
            w, layer = xs
            h = rms_norm(h_in, w["attn_norm"], c.rms_norm_eps)
            qkv = h @ w["w_qkv"]
            if c.attention_bias:
                qkv = qkv + w["b_qkv"]
            q, k, v = qkv_rope(qkv, cos, sin, num_heads=num_heads, num_kv_heads=num_kv_heads,
                               parts=parts)
            attn, state = mix(q, k, v, layer, state)
            h_in = h_in + shard.reduce(attn.reshape(n_tok, -1) @ w["wo"])
            h = rms_norm(h_in, w["mlp_norm"], c.rms_norm_eps)
            ffn = w["w_gate_up"].shape[-1] // 2
            gate, up = split_columns(h @ w["w_gate_up"], (ffn, ffn), parts)
            h_in = h_in + shard.reduce((jax.nn.silu(gate) * up) @ w["w_down"])
            return (h_in, state), None

        x, mix_state = self.layer_loop.run(body, (x, mix_state), placed, c.num_layers)
        return rms_norm(x, self.final_norm[...], c.rms_norm_eps), mix_state

    def _logits(self, h: jax.Array, shard: ModelShard) -> jax.Array:
        """Tied embeddings: every shard holds the whole embedding, so the whole head; otherwise
        ``shard``'s slice of ``lm_head``, gathered."""
        if self.config.tie_word_embeddings:
            return jnp.einsum("te,ve->tv", h, self.embed[...], preferred_element_type=jnp.float32)
        return shard.gather_vocab(jnp.einsum("te,ev->tv", h, self.lm_head[...],
                                             preferred_element_type=jnp.float32))

    # ------------------------------------------------------------------------------------------
    def __call__(self, batch: RaggedBatch, storage, attention: AttentionBackend,
                 options: AttentionOptions | None = None, shard: ModelShard = WHOLE_MODEL):
        """Serving forward. Returns (logits [S, V] float32 at ``batch.logits_indices``, storage).
        ``options`` overrides the model's attention options (a windowed cache imposes its window).
        The backend plans once for the step, before the layer loop, and runs once per layer.
        ``shard``: the share of the heads this call computes (``kvlab.models.shard``)."""
        options = options or self.attention_options
        c = self.config
        x = self.embed[...][batch.tokens]
        query = jax.ShapeDtypeStruct((batch.num_tokens, shard.heads(c.num_heads), c.head_dim), self.dtype)
        plan = attention.plan(batch, storage, options, query)

        def mix(q, k, v, layer, store):
            store = attention.write_kv(store, layer, k, v, batch.slots)
            return attention.run(q, store, layer, plan), store

        h, storage = self._layers(x, batch.positions, mix, storage, shard, self.qkv_rope)
        return self._logits(h[batch.logits_indices], shard), storage

    def place_kv(self, storage):
        """The KV storage placed where this model's steps read it (here: as it is)."""
        return storage

    def dense_logits(self, tokens: jax.Array, options: AttentionOptions | None = None,
                     kv_format: KVFormat = PLAIN) -> jax.Array:
        """No-cache forward of one sequence. tokens: [N] -> logits [N, V] float32; q, k and v by
        ``JnpQKVRope`` whatever the model's ``qkv_rope`` (the serving path's kernel is tested
        against it). With a ``kv_format``, each query reads K/V as a cache in that format would
        give them (``kv_format.dense_view``; formats whose scales are static:
        ``initial_layer_scales``)."""
        options = options or self.attention_options
        x = self.embed[...][tokens]
        c = self.config
        scales = kv_format.initial_layer_scales(num_layers=c.num_layers, num_kv_heads=c.num_kv_heads)
        if not np.all(scales > 0):
            raise ValueError(f"the {kv_format.name} format calibrates its scales from the first batch it "
                             f"stores; the dense reference needs static scales (e.g. StaticScales)")
        scales = jnp.asarray(scales)

        def mix(q, k, v, layer, state):
            stored = None if kv_format == PLAIN else kv_format.dense_view(k, v, scales[layer])
            return dense_causal_attention(q, k, v, options, stored), state

        positions = jnp.arange(tokens.shape[0], dtype=jnp.int32)
        h, _ = self._layers(x, positions, mix, (), WHOLE_MODEL, JnpQKVRope())
        return self._logits(h, WHOLE_MODEL)
