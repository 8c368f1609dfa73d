"""Attention: the ragged paged contract, its plain-jnp reference and backends."""

from kvlab.attention.backend import ReferenceAttention
from kvlab.attention.batch import RaggedBatch
from kvlab.attention.reference import AttentionOptions, ragged_paged_attention, token_positions

__all__ = ["AttentionOptions", "RaggedBatch", "ReferenceAttention", "ragged_paged_attention",
           "token_positions"]
