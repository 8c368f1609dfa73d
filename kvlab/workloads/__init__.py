"""Synthetic request traces from published statistics, seeded and reproducible."""

from kvlab.workloads.synthetic import (
    SyntheticRequest,
    long_prompt_mix,
    poisson_arrivals,
    shared_prefix,
    shared_prefix_optimal_hit_rate,
    sharegpt_like,
)

__all__ = ["SyntheticRequest", "long_prompt_mix", "poisson_arrivals", "shared_prefix",
           "shared_prefix_optimal_hit_rate", "sharegpt_like"]
