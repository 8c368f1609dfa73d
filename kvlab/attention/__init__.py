"""Attention: the ragged paged contract, its plain-jnp reference and backends (plan once per
step, run per layer: ``AttentionBackend``)."""

from kvlab.attention.backend import ReferenceAttention, ReferencePlan
from kvlab.attention.batch import RaggedBatch
from kvlab.attention.one_shot import BatchPlan, OneShotAttention
from kvlab.attention.protocol import AttentionBackend, AttentionPlan, query_spec
from kvlab.attention.reference import AttentionOptions, ragged_paged_attention, token_positions

__all__ = ["AttentionBackend", "AttentionOptions", "AttentionPlan", "BatchPlan", "OneShotAttention",
           "RaggedBatch", "ReferenceAttention", "ReferencePlan", "query_spec", "ragged_paged_attention",
           "token_positions"]
