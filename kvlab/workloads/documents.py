"""Long-document replay (TGI v3's long-prompt benchmark): about 20 documents of about 10k tokens,
a short question each and 50 output tokens, sent once cold and then again with the cache kept,
so prefix reuse of very long prompts shows as the gap between the "cold" and "warm" passes.

Examples:
    >>> reqs = long_document_replay(n_docs=3, doc_tokens=1000, doc_spread=0.0, seed=0)
    >>> [r.tag for r in reqs], len(reqs[0].prompt_token_ids)
    (['cold', 'cold', 'cold', 'warm', 'warm', 'warm'], 1016)
"""

from __future__ import annotations

import numpy as np

from kvlab.workloads.synthetic import SyntheticRequest


def long_document_replay(*, n_docs: int = 20, doc_tokens: int = 10_000, doc_spread: float = 0.1,
                         question_tokens: int = 16, output_tokens: int = 50, passes: int = 2, seed: int = 0,
                         vocab_size: int = 32000) -> list[SyntheticRequest]:
    """Pass 0 is tagged "cold", later passes "warm"; each pass asks a new question about every
    document (document lengths drawn within +-``doc_spread`` of ``doc_tokens``)."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(doc_tokens * (1 - doc_spread)), int(doc_tokens * (1 + doc_spread)) + 1, n_docs)
    docs = [rng.integers(3, vocab_size, int(n)).tolist() for n in lengths]
    return [SyntheticRequest(doc + rng.integers(3, vocab_size, question_tokens).tolist(), output_tokens,
                             tag="cold" if p == 0 else "warm")
            for p in range(passes) for doc in docs]
