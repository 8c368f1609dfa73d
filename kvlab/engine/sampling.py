"""On-device token sampling: greedy, temperature, top-k, top-p, per sequence."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Picks one token per row.

    logits: [S, V] float32; temperature, top_p: [S] float32; top_k: [S] int32 (0 = off);
    key: a PRNG key. Rows with temperature 0 take the argmax. Returns [S] int32.
    """

    def __call__(self, logits, temperature, top_k, top_p, key):
        greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

        def sample(_):
            vocab = logits.shape[-1]
            scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
            ordered = jnp.sort(scaled, axis=-1)[:, ::-1]                      # descending
            k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
            kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
            probs = jax.nn.softmax(jnp.where(ordered >= kth, ordered, -jnp.inf), axis=-1)
            before = jnp.cumsum(probs, axis=-1) - probs                       # mass above each token
            keep = (before < top_p[:, None]) & (ordered >= kth)
            threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
            masked = jnp.where(scaled >= threshold, scaled, -jnp.inf)
            drawn = jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)
            return jnp.where(temperature > 0, drawn, greedy)

        return jax.lax.cond(jnp.any(temperature > 0), sample, lambda _: greedy, None)
