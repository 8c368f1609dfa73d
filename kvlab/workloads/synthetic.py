"""Synthetic workloads: ShareGPT-like chat lengths and SGLang's generated shared-prefix benchmark.

Token ids are random draws from the vocabulary; what these traces model is lengths and sharing,
which is all a KV cache or a scheduler sees.

Examples:
    >>> reqs = sharegpt_like(1000, seed=0)
    >>> 140 < sum(len(r.prompt_token_ids) for r in reqs) / 1000 < 180
    True
    >>> round(shared_prefix_optimal_hit_rate(groups=64, prompts_per_group=16, system_tokens=2048,
    ...                                      question_tokens=128), 3)
    0.882
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Lognormal parameters chosen so that, after vLLM's benchmark filter (4 <= prompt <= 1024,
# output >= 4, prompt + output <= 2048), the means are about 161 prompt and 338 output tokens,
# the ShareGPT V3 figures vLLM's benchmarks report.
SHAREGPT_PROMPT_MU, SHAREGPT_PROMPT_SIGMA = 4.6, 1.2
SHAREGPT_OUTPUT_MU, SHAREGPT_OUTPUT_SIGMA = 5.45, 1.0


@dataclasses.dataclass(frozen=True)
class SyntheticRequest:
    """A prompt, how many tokens to generate, an arrival time (seconds or steps) and a free-form
    tag (e.g. a long-document replay's "cold" and "warm" passes, reported apart)."""

    prompt_token_ids: list[int]
    max_tokens: int
    arrival: float = 0.0
    tag: str = ""


def sharegpt_like(n: int, *, seed: int = 0, vocab_size: int = 32000, max_prompt: int = 1024,
                  max_total: int = 2048) -> list[SyntheticRequest]:
    """``n`` chat requests with ShareGPT-like lengths (post-filter means ~161 in / ~338 out)."""
    rng = np.random.default_rng(seed)
    out: list[SyntheticRequest] = []
    while len(out) < n:
        p = max(4, int(round(rng.lognormal(SHAREGPT_PROMPT_MU, SHAREGPT_PROMPT_SIGMA))))
        o = max(4, int(round(rng.lognormal(SHAREGPT_OUTPUT_MU, SHAREGPT_OUTPUT_SIGMA))))
        if p <= max_prompt and p + o <= max_total:
            out.append(SyntheticRequest(rng.integers(3, vocab_size, p).tolist(), o))
    return out


def long_prompt_mix(n: int, *, seed: int = 0, vocab_size: int = 32000, max_prompt: int = 8192
                    ) -> list[SyntheticRequest]:
    """Summarization-like requests (arXiv summarization): lognormal lengths with median ~2.7k
    prompt and ~170 output tokens."""
    rng = np.random.default_rng(seed)
    out: list[SyntheticRequest] = []
    while len(out) < n:
        p = int(round(rng.lognormal(np.log(2700), 0.45)))
        o = max(4, int(round(rng.lognormal(np.log(170), 0.6))))
        if 16 <= p <= max_prompt:
            out.append(SyntheticRequest(rng.integers(3, vocab_size, p).tolist(), o))
    return out


def shared_prefix(*, groups: int = 64, prompts_per_group: int = 16, system_tokens: int = 2048,
                  question_tokens: int = 128, output_tokens: int = 256, seed: int = 0,
                  vocab_size: int = 32000) -> list[SyntheticRequest]:
    """SGLang's generated shared-prefix workload: each group shares a system prompt, each prompt
    adds its own question; the requests come shuffled."""
    rng = np.random.default_rng(seed)
    reqs = []
    for _ in range(groups):
        system = rng.integers(3, vocab_size, system_tokens).tolist()
        for _ in range(prompts_per_group):
            reqs.append(SyntheticRequest(system + rng.integers(3, vocab_size, question_tokens).tolist(),
                                         output_tokens))
    order = rng.permutation(len(reqs))
    return [reqs[i] for i in order]


def shared_prefix_optimal_hit_rate(*, groups: int, prompts_per_group: int, system_tokens: int,
                                   question_tokens: int) -> float:
    """Hit tokens over prompt tokens when every system prompt is computed exactly once."""
    hits = groups * (prompts_per_group - 1) * system_tokens
    return hits / (groups * prompts_per_group * (system_tokens + question_tokens))
