"""Data-parallel replicas behind a Router: replicas on their own (fake CPU) devices give the tokens
of one engine; the policies route as they say; prefix-aware routing keeps a shared prefix on one
replica and so beats round robin's prefix hit rate on SGLang's shared-prefix workload; an abort
frees the replica's pages; bad input is refused."""

from __future__ import annotations

import jax
import pytest

import kvlab
from kvlab.parallel import LeastLoaded, PrefixAware, RoundRobin, Router, TensorParallel
from kvlab.workloads import shared_prefix

PARAMS = kvlab.SamplingParams(max_tokens=3, ignore_eos=True)


def replica(model, device=None):
    """An engine whose model (and KV) live on ``device`` (a one-device mesh), or the default one."""
    if device is not None:
        model = TensorParallel(model, jax.make_mesh((1,), ("tp",), devices=[device]))
    return kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=64, page_size=4, prefix_caching=True),
                        max_model_len=96)


def test_replicas_on_their_own_devices_give_the_tokens_of_one_engine(tiny_model):
    prompts = [[5 + i, 9, 11, 13, 17] for i in range(6)]
    want = [c.token_ids for c in replica(tiny_model).generate(prompts, PARAMS)]
    engines = [replica(tiny_model, d) for d in jax.devices()[1:3]]
    router = Router(engines, RoundRobin())
    assert [c.token_ids for c in router.generate(prompts, PARAMS)] == want
    assert router.routed_counts == [3, 3]
    assert {d.id for e in engines for d in e.storage.k.sharding.device_set} == {1, 2}
    assert all(e.cache.stats().pages_used == 0 for e in engines)


def test_least_loaded_and_round_robin_choose_as_they_say():
    assert [RoundRobin().choose([1], [0, 0, 0]) for _ in range(2)] == [0, 0]   # a fresh policy each
    rr = RoundRobin()
    assert [rr.choose([1], [5, 0, 0]) for _ in range(4)] == [0, 1, 2, 0]
    assert LeastLoaded().choose([1], [3, 1, 1, 2]) == 1


def test_prefix_aware_follows_the_longest_prefix_unless_it_is_short():
    policy = PrefixAware(block_tokens=4, min_match=0.5)
    system = list(range(100, 116))                                         # 4 blocks
    policy.routed(system + [1, 2, 3, 4], 1)
    assert policy.choose(system + [7, 7, 7, 7], [0, 9]) == 1               # 4 of 5 blocks match on 1
    assert policy.choose(system[:4] + list(range(40)), [0, 9]) == 0        # 1 of 11: least loaded
    assert policy.choose(system + [7, 7, 7, 7], [0, 65]) == 0              # out of balance: least loaded
    assert policy.choose(system + [7, 7, 7, 7], [200, 270]) == 1           # 270 < 1.5 x 200: by cache
    small = PrefixAware(block_tokens=4, max_blocks=2)
    small.routed(system, 0)
    assert small.matched_blocks(system, 0) == 0                            # the first blocks were evicted


def shared_prefix_hit_rate(model, policy) -> tuple[float, list[int]]:
    reqs = shared_prefix(groups=4, prompts_per_group=4, system_tokens=32, question_tokens=8,
                         output_tokens=2, vocab_size=256, seed=1)
    engines = [replica(model) for _ in range(2)]
    router = Router(engines, policy)
    for r in reqs:                                  # one arrival per two steps of every replica
        router.add_request(r.prompt_token_ids, kvlab.SamplingParams(max_tokens=r.max_tokens, ignore_eos=True))
        router.step()
        router.step()
    while router.has_unfinished():
        router.step()
    stats = [e.cache.stats() for e in engines]
    hits = sum(s.prefix_hit_tokens for s in stats) / sum(s.prompt_tokens for s in stats)
    return hits, router.routed_counts


def test_prefix_aware_routing_beats_round_robin_on_shared_prefixes(tiny_model):
    aware, counts = shared_prefix_hit_rate(tiny_model, PrefixAware(block_tokens=4))
    blind, _ = shared_prefix_hit_rate(tiny_model, RoundRobin())
    assert sum(counts) == 16 and min(counts) >= 4                          # groups spread over both
    assert aware > blind + 0.1, (aware, blind)


def test_an_abort_frees_the_replica(tiny_model):
    engines = [replica(tiny_model) for _ in range(2)]
    router = Router(engines, LeastLoaded())
    keep = router.add_request([5, 6, 7, 8, 9, 10], kvlab.SamplingParams(max_tokens=20, ignore_eos=True))
    gone = router.add_request([5, 6, 7, 8, 9, 11], kvlab.SamplingParams(max_tokens=20, ignore_eos=True))
    router.step()
    router.abort(gone)
    assert engines[1].cache.stats().pages_used == 0 and router.add_request([1, 2, 3], PARAMS)
    while router.has_unfinished():
        router.step()
    assert all(e.cache.stats().pages_used == 0 for e in engines) and keep


def test_loads_come_back_when_every_sample_of_a_request_ends(tiny_model):
    """A request with n samples runs as <id>#<j> on its replica: its load is released when the
    last of them ends (or it is aborted), so least-loaded routing sees an idle replica again."""
    engines = [replica(tiny_model) for _ in range(2)]
    router = Router(engines, LeastLoaded())
    two = kvlab.SamplingParams(n=2, max_tokens=3, ignore_eos=True, temperature=1.0, seed=1)
    [done] = router.generate([[5, 6, 7, 8]], two)
    assert len(done.samples) == 2 and router.loads == [0, 0]
    assert router.add_request([1, 2, 3], PARAMS) and router.routed_counts == [2, 0]   # replica 0 again
    gone = router.add_request([9, 9, 9], two)
    router.abort(gone)
    router.abort(gone)                                    # again: nothing left to release
    ends = set()
    while router.has_unfinished():
        ends |= {(ev.request_id, ev.finish_reason) for ev in router.step() if ev.finished}
    assert {(f"{gone}#0", "abort"), (f"{gone}#1", "abort")} <= ends      # reported, idle replica or not
    assert router.loads == [0, 0] and all(e.cache.stats().pages_used == 0 for e in engines)


def test_bad_input_is_refused(tiny_model):
    with pytest.raises(ValueError, match="at least one engine"):
        Router([])
    router = Router([replica(tiny_model)])
    router.add_request([1, 2, 3], PARAMS, request_id="a")
    with pytest.raises(ValueError, match="request id 'a' is already in use"):
        router.add_request([1, 2, 3], PARAMS, request_id="a")
