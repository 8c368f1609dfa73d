"""Synthetic request traces from published statistics, seeded and reproducible.

Lengths and sharing: ``sharegpt_like``, ``long_prompt_mix``, ``shared_prefix`` (SGLang's),
``few_shot`` and ``tree_of_thought`` prefix trees, ``chat_sessions`` (multi-turn, closed loop),
``long_document_replay`` (TGI v3's cold/warm passes). Arrivals: ``poisson_arrivals``,
``gamma_arrivals`` (burstiness), ``all_at_once``. ``optimal_hit_rate`` bounds any prefix cache.
"""

from kvlab.workloads.arrivals import all_at_once, gamma_arrivals, poisson_arrivals
from kvlab.workloads.documents import long_document_replay
from kvlab.workloads.sessions import ChatSession, chat_sessions
from kvlab.workloads.synthetic import (
    SyntheticRequest,
    long_prompt_mix,
    shared_prefix,
    shared_prefix_optimal_hit_rate,
    sharegpt_like,
)
from kvlab.workloads.trees import few_shot, optimal_hit_rate, tree_of_thought

__all__ = ["ChatSession", "SyntheticRequest", "all_at_once", "chat_sessions", "few_shot", "gamma_arrivals",
           "long_document_replay", "long_prompt_mix", "optimal_hit_rate", "poisson_arrivals", "shared_prefix",
           "shared_prefix_optimal_hit_rate", "sharegpt_like", "tree_of_thought"]
