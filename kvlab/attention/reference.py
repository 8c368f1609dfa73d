"""Ragged paged attention in plain jnp: the specification every kernel is tested against.

One call serves prefill chunks, decodes and mixed batches. Tokens of all sequences are flattened:
sequence ``s`` owns query rows ``cu_q_lens[s]:cu_q_lens[s+1]`` and has ``kv_lens[s]`` tokens in the
cache *after* this step's writes, so its query ``i`` sits at position ``kv_lens[s] - q_len + i`` and
sees keys ``j <= position`` (causal). Keys live in pages: token ``j`` of sequence ``s`` is at
``k_pages[layer, page_table[s, j // page_size], j % page_size]``.

Masking options:
  * ``sliding_window=W``: key ``j`` is visible from position ``p`` only if ``p - j < W``
    (the window counts the query's own token, as in Mistral and transformers);
  * ``num_sink_tokens=n``: the first ``n`` tokens stay visible whatever the window (StreamingLLM);
  * ``soft_cap=c``: scores become ``c * tanh(score / c)`` before the mask (Gemma 2 style).

Rows past ``cu_q_lens[num_seqs]`` are padding and return zeros; so does a row with no visible key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from einops import rearrange


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionOptions:
    """Static attention options of a model (hashable: they are part of the compiled step)."""

    sm_scale: float
    sliding_window: int | None = None
    num_sink_tokens: int = 0
    soft_cap: float | None = None

    def __post_init__(self):
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be None or >= 1, got {self.sliding_window}")
        if self.num_sink_tokens < 0:
            raise ValueError(f"num_sink_tokens must be >= 0, got {self.num_sink_tokens}")
        if self.soft_cap is not None and self.soft_cap <= 0:
            raise ValueError(f"soft_cap must be None or > 0, got {self.soft_cap}")


def token_positions(cu_q_lens: jax.Array, kv_lens: jax.Array, num_tokens: int):
    """Per query row: its sequence index, absolute position and whether it is a real token.

    cu_q_lens: [S+1] int32, kv_lens: [S] int32 -> (seq [T], pos [T], valid [T]).
    """
    num_seqs_padded = kv_lens.shape[0]
    rows = jnp.arange(num_tokens, dtype=jnp.int32)
    seq = jnp.searchsorted(cu_q_lens[1:], rows, side="right").astype(jnp.int32)
    valid = seq < num_seqs_padded
    seq = jnp.minimum(seq, num_seqs_padded - 1)
    q_len = cu_q_lens[seq + 1] - cu_q_lens[seq]
    pos = kv_lens[seq] - q_len + (rows - cu_q_lens[seq])
    return seq, pos, valid


def ragged_paged_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    layer: jax.Array | int,
    cu_q_lens: jax.Array,
    kv_lens: jax.Array,
    page_table: jax.Array,
    num_seqs: jax.Array | int,
    options: AttentionOptions,
) -> jax.Array:
    """Attention of ragged queries over a paged KV cache.

    q: [T, Hq, D]; k_pages, v_pages: [L, num_pages, page_size, Hkv, D]; layer: int scalar;
    cu_q_lens: [S+1] int32 (non-decreasing, rows of padded sequences repeat the last offset);
    kv_lens: [S] int32; page_table: [S, max_pages] int32; num_seqs: int scalar (<= S).
    Returns [T, Hq, D] in q's dtype. Scores are accumulated in float32 (float64 for f64 inputs).
    """
    pages, visible = visible_keys(cu_q_lens, kv_lens, page_table, num_seqs, page_size=k_pages.shape[2],
                                  num_tokens=q.shape[0], options=options)
    return attend_gathered(q, lambda p: (k_pages[layer, p], v_pages[layer, p]), pages, visible,
                           num_kv_heads=k_pages.shape[3], options=options)


def visible_keys(cu_q_lens, kv_lens, page_table, num_seqs, *, page_size: int, num_tokens: int,
                 options: AttentionOptions) -> tuple[jax.Array, jax.Array]:
    """The layer-independent half of the reference: per query row its sequence's pages
    ``[T, max_pages]`` and which of their ``max_pages * page_size`` keys it sees ``[T, K]`` bool
    (causal, window, sinks; nothing for padding rows)."""
    max_keys = page_table.shape[1] * page_size
    seq, pos, valid = token_positions(cu_q_lens, kv_lens, num_tokens)
    valid = valid & (seq < num_seqs)
    key = jnp.arange(max_keys, dtype=jnp.int32)[None, :]
    visible = (key < kv_lens[seq][:, None]) & (key <= pos[:, None]) & valid[:, None]
    if options.sliding_window is not None:
        in_window = pos[:, None] - key < options.sliding_window
        if options.num_sink_tokens:
            in_window = in_window | (key < options.num_sink_tokens)
        visible = visible & in_window
    return page_table[seq], visible


def attend_gathered(q, gather, pages, visible, *, num_kv_heads: int, options: AttentionOptions) -> jax.Array:
    """The per-layer half: ``gather(pages [T, P]) -> (k, v)``, each ``[T, P, page_size, Hkv, D]``,
    reads one layer's pages in any KV layout (see ``storage.gather_pages``); ``pages`` and
    ``visible`` come from ``visible_keys``. q: [T, Hq, D] -> [T, Hq, D] in q's dtype."""
    num_tokens, num_q_heads, head_dim = q.shape
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of KV heads ({num_kv_heads})")
    max_keys = visible.shape[1]
    acc = jnp.promote_types(q.dtype, jnp.float32)

    k, v = gather(pages)                                         # [T, P, page_size, Hkv, D]
    k = k.reshape(num_tokens, max_keys, num_kv_heads, head_dim)
    # Slots no query sees (a page's unwritten tail, another sequence's stale bytes) take no part,
    # not even as 0 * NaN.
    v = jnp.where(visible[:, :, None, None], v.reshape(num_tokens, max_keys, num_kv_heads, head_dim), 0)

    qg = rearrange(q, "t (k g) d -> t k g d", k=num_kv_heads).astype(acc)
    scores = jnp.einsum("tkgd,tjkd->tkgj", qg, k.astype(acc)) * options.sm_scale
    if options.soft_cap is not None:
        scores = options.soft_cap * jnp.tanh(scores / options.soft_cap)

    visible = visible[:, None, None, :]                          # [T, 1, 1, K]
    scores = jnp.where(visible, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    probs = jnp.where(visible, jnp.exp(scores - row_max), 0.0)
    denom = jnp.sum(probs, axis=-1, keepdims=True)
    out = jnp.einsum("tkgj,tjkd->tkgd", probs, v.astype(acc))
    out = jnp.where(denom > 0, out / jnp.where(denom > 0, denom, 1.0), 0.0)
    return rearrange(out, "t k g d -> t (k g) d").astype(q.dtype)
