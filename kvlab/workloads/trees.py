"""Prefix trees: few-shot prompts and tree-of-thought expansions, and the best hit rate any prefix
cache could reach on a trace.

* ``few_shot``: one instruction header shared by all requests, then per task a bank of worked
  examples shared by that task's requests, then each request's own question (three levels).
* ``tree_of_thought``: a root problem statement expanded ``branching`` ways per level for
  ``depth`` levels; each node is one request whose prompt is the path from the root to it, sent
  level by level (a parent's prompt is a prefix of its children's).
* ``optimal_hit_rate``: hit tokens over prompt tokens with an unbounded cache and the best order
  (prompts sorted; each hits its longest common prefix with the previous one, never its last token).

Examples:
    >>> reqs = tree_of_thought(depth=2, branching=3, root_tokens=100, step_tokens=10, seed=0)
    >>> len(reqs), round(optimal_hit_rate([r.prompt_token_ids for r in reqs]), 3)
    (12, 0.844)
"""

from __future__ import annotations

import numpy as np

from kvlab.workloads.synthetic import SyntheticRequest


def few_shot(n: int, *, tasks: int = 4, header_tokens: int = 256, shots: int = 5,
             shot_tokens: int = 160, question_tokens: int = 64, output_tokens: int = 64, seed: int = 0,
             vocab_size: int = 32000) -> list[SyntheticRequest]:
    """``n`` requests over ``tasks`` tasks (assigned at random, requests shuffled)."""
    rng = np.random.default_rng(seed)
    header = rng.integers(3, vocab_size, header_tokens).tolist()
    banks = [header + rng.integers(3, vocab_size, shots * shot_tokens).tolist() for _ in range(tasks)]
    return [SyntheticRequest(banks[int(t)] + rng.integers(3, vocab_size, question_tokens).tolist(),
                             output_tokens) for t in rng.integers(0, tasks, n)]


def tree_of_thought(*, depth: int = 3, branching: int = 3, root_tokens: int = 512, step_tokens: int = 64,
                    output_tokens: int = 64, seed: int = 0, vocab_size: int = 32000
                    ) -> list[SyntheticRequest]:
    """One request per non-root node, level by level: ``branching + branching^2 + ...`` requests."""
    if depth < 1 or branching < 1:
        raise ValueError(f"depth and branching must be >= 1, got {depth} and {branching}")
    rng = np.random.default_rng(seed)
    level = [rng.integers(3, vocab_size, root_tokens).tolist()]
    out: list[SyntheticRequest] = []
    for _ in range(depth):
        level = [path + rng.integers(3, vocab_size, step_tokens).tolist()
                 for path in level for _ in range(branching)]
        out += [SyntheticRequest(path, output_tokens) for path in level]
    return out


def optimal_hit_rate(prompts: list[list[int]]) -> float:
    """Upper bound of any prefix cache's hit rate on these prompts (hit tokens / prompt tokens)."""
    total = sum(len(p) for p in prompts)
    if not total:
        return 0.0
    ordered = sorted(prompts)
    hits = 0
    for prev, cur in zip(ordered, ordered[1:]):
        n = min(len(prev), len(cur))
        a, b = np.asarray(prev[:n]), np.asarray(cur[:n])
        diff = np.flatnonzero(a != b)
        common = int(diff[0]) if diff.size else n
        hits += min(common, len(cur) - 1)
    return hits / total
