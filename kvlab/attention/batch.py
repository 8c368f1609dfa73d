"""The flattened inputs of one engine step (FlashInfer's "plan"): built once on the host per
step, shared by every layer.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RaggedBatch:
    """All scheduled tokens of all sequences, concatenated and padded to bucket sizes.

    tokens, positions: [T] int32 (padding rows: token 0, position 0);
    slots: [T] int32 KV write slot ``page * page_size + offset`` (-1 for padding);
    cu_q_lens: [S+1] int32 query offsets (padded sequences repeat the last offset);
    kv_lens: [S] int32 tokens in cache after this step's writes (0 for padding);
    page_table: [S, P] int32 pages of each sequence (padding entries point at page 0);
    num_seqs: [] int32 real sequences; logits_indices: [S] int32 row whose logits are sampled.
    """

    tokens: jax.Array
    positions: jax.Array
    slots: jax.Array
    cu_q_lens: jax.Array
    kv_lens: jax.Array
    page_table: jax.Array
    num_seqs: jax.Array
    logits_indices: jax.Array

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_seq_slots(self) -> int:
        return self.kv_lens.shape[0]

    @classmethod
    def build(cls, *, q_tokens: list[np.ndarray], q_starts: list[int], page_lists: list[list[int]],
              page_size: int, token_bucket: int, seq_bucket: int, page_bucket: int) -> RaggedBatch:
        """Host-side packing. For sequence s: ``q_tokens[s]`` are its new tokens, starting at
        absolute position ``q_starts[s]``; ``page_lists[s]`` are its pages in order."""
        n_seq = len(q_tokens)
        tokens = np.zeros(token_bucket, np.int32)
        positions = np.zeros(token_bucket, np.int32)
        slots = np.full(token_bucket, -1, np.int32)
        cu = np.zeros(seq_bucket + 1, np.int32)
        kv_lens = np.zeros(seq_bucket, np.int32)
        table = np.zeros((seq_bucket, page_bucket), np.int32)
        logits_idx = np.zeros(seq_bucket, np.int32)
        off = 0
        for s in range(n_seq):
            new, start, pages = q_tokens[s], q_starts[s], page_lists[s]
            n = len(new)
            pos = np.arange(start, start + n, dtype=np.int64)
            page_arr = np.asarray(pages, np.int64)
            tokens[off:off + n] = new
            positions[off:off + n] = pos
            slots[off:off + n] = page_arr[pos // page_size] * page_size + pos % page_size
            table[s, :len(pages)] = pages
            kv_lens[s] = start + n
            off += n
            cu[s + 1] = off
            logits_idx[s] = off - 1
        cu[n_seq + 1:] = off
        return cls(tokens=tokens, positions=positions, slots=slots, cu_q_lens=cu, kv_lens=kv_lens,
                   page_table=table, num_seqs=np.int32(n_seq), logits_indices=logits_idx)
