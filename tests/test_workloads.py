"""Workload generators: statistics, structure, reproducibility, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from kvlab.workloads import (
    all_at_once,
    chat_sessions,
    few_shot,
    gamma_arrivals,
    long_document_replay,
    optimal_hit_rate,
    poisson_arrivals,
    shared_prefix,
    shared_prefix_optimal_hit_rate,
    sharegpt_like,
    tree_of_thought,
)


def gaps(reqs):
    assert reqs[0].arrival == 0.0                 # the first request is sent at once (vLLM)
    return np.diff([r.arrival for r in reqs])


def test_gamma_burstiness_keeps_the_rate_and_sets_the_variation():
    reqs = sharegpt_like(4000, seed=0)
    for b in (0.25, 1.0, 4.0):
        g = gaps(gamma_arrivals(reqs, rate=20.0, burstiness=b, seed=1))
        assert abs(g.mean() - 1 / 20) < 0.1 / 20                      # mean gap = 1 / rate
        assert abs(g.std() / g.mean() - 1 / np.sqrt(b)) < 0.12        # CV = 1 / sqrt(burstiness)
    pg = gaps(poisson_arrivals(reqs, rate=20.0, seed=1))
    assert abs(pg.std() / pg.mean() - 1.0) < 0.08
    assert all(r.arrival == 0.0 for r in all_at_once(poisson_arrivals(reqs[:5], rate=1.0)))
    with pytest.raises(ValueError, match="burstiness must be > 0"):
        gamma_arrivals(reqs, rate=1.0, burstiness=0)
    with pytest.raises(ValueError, match="rate must be > 0"):
        gamma_arrivals(reqs, rate=-1.0)


def test_generators_are_reproducible_by_seed():
    a = [r.prompt_token_ids for r in few_shot(20, seed=3)]
    assert a == [r.prompt_token_ids for r in few_shot(20, seed=3)]
    assert a != [r.prompt_token_ids for r in few_shot(20, seed=4)]
    s1, s2 = chat_sessions(3, seed=5), chat_sessions(3, seed=5)
    assert s1 == s2


def test_optimal_hit_rate_matches_the_shared_prefix_formula():
    kw = dict(groups=6, prompts_per_group=5, system_tokens=300, question_tokens=40)
    reqs = shared_prefix(**kw, output_tokens=8, seed=2)
    got = optimal_hit_rate([r.prompt_token_ids for r in reqs])
    assert got == pytest.approx(shared_prefix_optimal_hit_rate(**kw), abs=1e-3)
    assert optimal_hit_rate([[1, 2, 3], [1, 2, 3]]) == pytest.approx(2 / 6)    # never the last token
    assert optimal_hit_rate([]) == 0.0


def test_few_shot_is_a_three_level_prefix_tree():
    reqs = few_shot(40, tasks=3, header_tokens=50, shots=2, shot_tokens=20, question_tokens=10, seed=0)
    prompts = [r.prompt_token_ids for r in reqs]
    assert all(len(p) == 50 + 40 + 10 for p in prompts)
    assert len({tuple(p[:50]) for p in prompts}) == 1                     # one header
    assert len({tuple(p[:90]) for p in prompts}) == 3                     # one bank per task
    assert len({tuple(p) for p in prompts}) == 40                         # own questions


def test_tree_of_thought_parents_prefix_their_children():
    reqs = tree_of_thought(depth=3, branching=2, root_tokens=30, step_tokens=5, seed=1)
    assert len(reqs) == 2 + 4 + 8
    level1, level2 = reqs[:2], reqs[2:6]
    for i, child in enumerate(level2):
        parent = level1[i // 2].prompt_token_ids
        assert child.prompt_token_ids[:len(parent)] == parent
    with pytest.raises(ValueError, match="depth and branching"):
        tree_of_thought(depth=0)


def test_chat_session_prompts_grow_by_the_replies_actually_generated():
    s = chat_sessions(1, turns=4, system_tokens=16, seed=0)[0]
    replies = []
    prev = s.prompt(0, [])
    for turn in range(1, 4):
        replies.append(list(range(100, 100 + turn)))
        p = s.prompt(turn, replies)
        assert p[:len(prev)] == prev and p[len(prev):len(prev) + turn] == replies[-1]
        prev = p
    req = s.request(3, replies, arrival=2.5)
    assert req.max_tokens == s.reply_tokens[3] and req.arrival == 2.5 and req.tag == "turn3"
    with pytest.raises(ValueError, match="needs the 2 earlier replies"):
        s.prompt(2, replies[:1])
    many = chat_sessions(200, turns=(2, 6), seed=1)
    assert {x.num_turns for x in many} == {2, 3, 4, 5, 6}


def test_long_document_replay_has_a_cold_and_a_warm_pass_over_the_same_documents():
    reqs = long_document_replay(n_docs=20, doc_tokens=10_000, seed=0)
    cold, warm = reqs[:20], reqs[20:]
    assert [r.tag for r in cold] == ["cold"] * 20 and [r.tag for r in warm] == ["warm"] * 20
    lens = np.array([len(r.prompt_token_ids) for r in cold])
    assert 9_000 <= lens.min() and lens.max() <= 11_016 and abs(lens.mean() - 10_016) < 600
    for c, w in zip(cold, warm):
        n = len(c.prompt_token_ids) - 16
        assert c.prompt_token_ids[:n] == w.prompt_token_ids[:n]          # same document
        assert c.prompt_token_ids[n:] != w.prompt_token_ids[n:]          # a new question
        assert w.max_tokens == 50
