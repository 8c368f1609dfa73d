"""Synthetic request traces from published statistics, seeded and reproducible."""

from kvlab.workloads.synthetic import (
    SyntheticRequest,
    shared_prefix,
    shared_prefix_optimal_hit_rate,
    sharegpt_like,
)

__all__ = ["SyntheticRequest", "shared_prefix", "shared_prefix_optimal_hit_rate", "sharegpt_like"]
