"""The flattened inputs of one engine step: built once on the host per step, shared by every layer
(the host half of FlashInfer's plan; a backend's ``plan`` derives the rest inside the step, and its
``specialize`` fixes the static flags it does not compile for).
"""

from __future__ import annotations

import dataclasses
import itertools

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
    num_seqs: [] int32 real sequences; logits_indices: [S] int32 row whose logits are sampled;
    decode_only: static: every real sequence has exactly one new token (kernels pick their path).
    has_decodes: static: some real sequence has exactly one new token (True when unknown: a
    backend may then run its decode path for nothing, never skip it). ``build`` sets both exact;
    ``backend.specialize(batch)`` fixes those the backend does not compile separate programs for.
    """

    tokens: jax.Array
    positions: jax.Array
    slots: jax.Array
    cu_q_lens: jax.Array
    kv_lens: jax.Array
    page_table: jax.Array
    num_seqs: jax.Array
    logits_indices: jax.Array
    decode_only: bool = dataclasses.field(default=False, metadata=dict(static=True))
    has_decodes: bool = dataclasses.field(default=True, metadata=dict(static=True))

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_seq_slots(self) -> int:
        return self.kv_lens.shape[0]

    @classmethod
    def build(cls, *, q_tokens: list, q_starts: list[int], page_lists: list[list[int]],
              page_size: int, token_bucket: int, seq_bucket: int, page_bucket: int) -> RaggedBatch:
        """Host-side packing. For sequence s: ``q_tokens[s]`` are its new tokens, starting at
        absolute position ``q_starts[s]``; ``page_lists[s]`` are its pages in order.

        Vectorized: the only Python-level loops are C iterations over the token and page lists
        (``itertools.chain``), so packing 256 sequences costs well under a millisecond plus the
        page-table size."""
        n_seq = len(q_tokens)
        lens = np.fromiter(map(len, q_tokens), np.int64, n_seq)
        n_pages = np.fromiter(map(len, page_lists), np.int64, n_seq)
        num_tokens = int(lens.sum())
        starts = np.asarray(q_starts, np.int64).reshape(n_seq)

        cu = np.zeros(seq_bucket + 1, np.int32)
        cu[1:n_seq + 1] = np.cumsum(lens)
        cu[n_seq + 1:] = num_tokens
        row_seq = np.repeat(np.arange(n_seq), lens)                     # sequence of each row
        pos = starts[row_seq] + np.arange(num_tokens) - cu[row_seq]

        table = np.zeros((seq_bucket, page_bucket), np.int32)
        flat = np.fromiter(itertools.chain.from_iterable(page_lists), np.int32, int(n_pages.sum()))
        page_rows = np.repeat(np.arange(n_seq), n_pages)
        first = np.concatenate([[0], np.cumsum(n_pages)[:-1]]).astype(np.int64)
        table[page_rows, np.arange(len(flat)) - first[page_rows]] = flat

        tokens = np.zeros(token_bucket, np.int32)
        tokens[:num_tokens] = np.fromiter(itertools.chain.from_iterable(q_tokens), np.int32, num_tokens)
        positions = np.zeros(token_bucket, np.int32)
        positions[:num_tokens] = pos
        slots = np.full(token_bucket, -1, np.int32)
        slots[:num_tokens] = table[row_seq, pos // page_size] * page_size + pos % page_size
        kv_lens = np.zeros(seq_bucket, np.int32)
        kv_lens[:n_seq] = starts + lens
        logits_idx = np.zeros(seq_bucket, np.int32)
        logits_idx[:n_seq] = cu[1:n_seq + 1] - 1
        return cls(tokens=tokens, positions=positions, slots=slots, cu_q_lens=cu, kv_lens=kv_lens,
                   page_table=table, num_seqs=np.int32(n_seq), logits_indices=logits_idx,
                   decode_only=bool(n_seq) and bool((lens == 1).all()),
                   has_decodes=bool((lens == 1).any()))
