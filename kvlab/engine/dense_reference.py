"""The one-request-at-a-time reference the engine's outputs are tested against: a request decoded
alone with no cache, a full forward per token (``greedy``), or one forward that checks a whole
sequence of tokens (``greedy_choices``).

Examples:
    >>> from kvlab.models import LlamaModel, ModelConfig
    >>> reference = DenseReferenceDecoder(LlamaModel(ModelConfig.tiny(), seed=0))
    >>> tokens = reference.greedy([5, 6, 7], 4)
    >>> reference.greedy_choices([5, 6, 7], tokens) == tokens
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvlab.kvcache.formats.base import PLAIN, KVFormat


class DenseReferenceDecoder:
    """The reference: decode one request alone with no cache, a full forward per token
    (``options``: attention options other than the model's, e.g. a window and sinks; ``kv_format``:
    K/V rounded through a KV format as a cache in it stores them, static scales only).

    Lengths are padded to multiples of 64 (causal attention ignores the padding), so the number
    of compilations grows with the length range, not with every length.
    """

    def __init__(self, model, options=None, kv_format: KVFormat = PLAIN):
        graphdef, self.state = nnx.split(model)

        def logits_at(state, tokens, n):
            return nnx.merge(graphdef, state).dense_logits(tokens, options, kv_format)[n - 1]

        self._logits_at = jax.jit(logits_at)
        self._all_logits = jax.jit(lambda state, tokens: nnx.merge(graphdef, state).dense_logits(
            tokens, options, kv_format))

    def next_logits(self, token_ids) -> np.ndarray:
        """Logits [V] (float32) after the given tokens."""
        padded = np.zeros(-(-len(token_ids) // 64) * 64, np.int32)
        padded[:len(token_ids)] = token_ids
        return np.asarray(self._logits_at(self.state, padded, np.int32(len(token_ids))))

    def greedy_choices(self, prompt_token_ids, token_ids) -> list[int]:
        """The reference's greedy choice after the prompt and each prefix of ``token_ids``, from
        one forward over both (causal attention: position ``i`` sees only what precedes it).
        It equals ``token_ids`` exactly when ``greedy(prompt, len(token_ids))`` would give them,
        at the cost of one forward instead of one per token."""
        ids = list(prompt_token_ids) + list(token_ids)
        if not token_ids:
            return []
        padded = np.zeros(-(-len(ids) // 64) * 64, np.int32)
        padded[:len(ids)] = ids
        logits = self._all_logits(self.state, padded)
        first = len(prompt_token_ids) - 1
        return np.asarray(jnp.argmax(logits[first:first + len(token_ids)], axis=-1)).tolist()

    def greedy(self, prompt_token_ids, max_tokens: int, eos_token_ids=()) -> list[int]:
        out, generated = list(prompt_token_ids), []
        for _ in range(max_tokens):
            token = int(np.argmax(self.next_logits(out)))
            generated.append(token)
            out.append(token)
            if token in eos_token_ids:
                break
        return generated
