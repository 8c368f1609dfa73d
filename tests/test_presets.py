"""The seed-system presets: each composes working parts, runs a workload to the end with every page
back, shows the behaviour its system is known for, and (in the engine) gives the dense greedy
tokens."""

from __future__ import annotations

import re

import pytest

import kvlab
from kvlab.bench import custom, presets, simulate
from kvlab.engine import DenseReferenceDecoder
from kvlab.workloads import shared_prefix


def small(name):
    kw = dict(kv_tokens=8192, max_num_seqs=16)
    system = name.split("-")[0]                         # lmdeploy-kv8 is lmdeploy's, and so on
    if system == "static":
        kw["max_seq_len"] = 512
    elif system == "lmdeploy":
        kw.update(token_budget=256, block_tokens=16)
    elif system != "deepspeed":
        kw["token_budget"] = 512
    return presets.PRESETS[name](**kw)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_runs_a_shared_prefix_workload_on_the_host(name):
    p = small(name)
    reqs = shared_prefix(groups=4, prompts_per_group=6, system_tokens=256, question_tokens=16,
                         output_tokens=16, seed=1)
    r = simulate(p.scheduler, p.cache, reqs)
    assert r.finished == len(reqs)
    s = r.stats
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total
    system = name.split("-")[0]
    if system in ("vllm", "sglang", "tgi", "trtllm", "custom"):
        assert s.hit_rate > 0.3, name                   # all of these reuse prefixes
    else:       # FastGen's blocked KV keeps no prefix cache, and TurboMind's is off by default
        assert s.hit_rate == 0.0
    if system in ("tgi", "trtllm"):
        assert r.preemptions == 0                       # reserve-up-front admission never preempts
    assert p.name == name and all(isinstance(m, str) and m for m in p.missing)


def test_lmdeploy_reuses_blocks_with_prefix_caching_on():
    """TurboMind's ``enable_prefix_caching=True``: the same workload now hits its blocks."""
    p = presets.lmdeploy(kv_tokens=8192, max_num_seqs=16, token_budget=256, block_tokens=16,
                         prefix_caching=True)
    reqs = shared_prefix(groups=4, prompts_per_group=6, system_tokens=256, question_tokens=16,
                         output_tokens=16, seed=1)
    r = simulate(p.scheduler, p.cache, reqs)
    assert r.finished == len(reqs) and r.stats.hit_rate > 0.3


@pytest.mark.parametrize("cache", sorted(custom.CACHES))
def test_custom_compositions_of_every_cache_and_scheduler(cache):
    """Every named cache under every named scheduler and policy serves a shared-prefix trace on the
    host with every page back; the prefix caches hit, the contiguous one cannot."""
    reqs = shared_prefix(groups=2, prompts_per_group=4, system_tokens=64, question_tokens=8, output_tokens=8,
                         seed=2)
    for scheduler in custom.SCHEDULERS:
        for policy in custom.POLICIES:
            p = custom.custom(4096, cache=cache, scheduler=scheduler, policy=policy, max_num_seqs=8,
                              token_budget=128, max_model_len=128)
            r = simulate(p.scheduler, p.cache, reqs)
            assert r.finished == len(reqs) and r.stats.pages_used == 0, (scheduler, policy)
            assert (r.stats.hit_rate > 0.2) == (cache != "contiguous"), (scheduler, policy)
    swap = custom.custom(4096, cache=cache if cache != "contiguous" else "paged", preemption="swap")
    assert swap.cache.host_tier is not None and isinstance(swap.scheduler.preemption, kvlab.SwapPreemption)


def test_custom_composition_names_its_choices():
    for kw, msg in ((dict(cache="ring"), "unknown cache 'ring'; known: paged, blocked, radix, contiguous"),
                    (dict(scheduler="fifo"),
                     "unknown scheduler 'fifo'; known: continuous, chunked, persistent"),
                    (dict(policy="random"), "unknown policy 'random'; known: fcfs, lpm, shortest"),
                    (dict(cache="radix", prefix_caching=False), "the radix cache is a prefix cache"),
                    (dict(cache="contiguous", preemption="swap"), "the contiguous cache has no host tier")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            custom.custom(1024, **kw)


def test_presets_say_what_they_lack():
    assert presets.vllm(kv_tokens=1024).missing == ()
    assert "NVMe weight tier" in presets.deepspeed(kv_tokens=1024).missing[0]
    assert presets.lmdeploy(kv_tokens=1024).missing == ()         # int8/int4 KV: lmdeploy-kv8, -kv4
    assert not any("KV" in m and "fp8" in m.lower() for m in presets.trtllm(kv_tokens=1024).missing)
    windowed = presets.trtllm(kv_tokens=4096, window=64, num_sink_tokens=4, token_budget=128, max_num_seqs=8)
    assert type(windowed.cache).__name__ == "CircularKVCache"


@pytest.mark.parametrize("name", ["vllm", "sglang", "static"])
def test_presets_in_the_engine_give_the_dense_greedy_tokens(tiny_model, name):
    engine = small(name).engine(tiny_model, max_model_len=256)
    system = list(range(40, 70))
    prompts = [system + [5 + i] for i in range(3)] + [[9, 10, 11]]
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=5, ignore_eos=True))
    ref = DenseReferenceDecoder(tiny_model)
    assert [o.token_ids for o in outs] == [ref.greedy(p, 5) for p in prompts]


def test_static_batching_admits_a_batch_only_when_the_last_one_ended():
    from kvlab.kvcache import PagedKVCache
    from kvlab.schedulers import ContinuousScheduler, Request, SamplingParams, StaticBatchAdmission

    sched = ContinuousScheduler(max_num_seqs=2, max_num_batched_tokens=64, admission=StaticBatchAdmission())
    sched.attach(PagedKVCache(num_pages=32, page_size=4))
    for i, n in enumerate([2, 6, 3, 3, 1]):
        sched.add(Request(f"r{i}", [1 + i] * 5, SamplingParams(max_tokens=n, ignore_eos=True)))
    batches, finished_at = [], {}
    step = 0
    while sched.has_unfinished():
        plan = sched.schedule()
        step += 1
        batches.append({s.request.request_id for s in plan.seqs})
        for out in sched.update(plan, [7] * plan.num_rows):
            if out.finished:
                finished_at[out.request.request_id] = step
    first_seen = {rid: min(i + 1 for i, b in enumerate(batches) if rid in b) for rid in finished_at}
    assert first_seen["r0"] == first_seen["r1"] == 1
    assert first_seen["r2"] == first_seen["r3"] == max(finished_at["r0"], finished_at["r1"]) + 1 == 7
    assert first_seen["r4"] == max(finished_at["r2"], finished_at["r3"]) + 1
    assert batches[2] == {"r1"}                # r0 ended after 2 tokens; its slot stays empty


def test_trtllm_host_pool_reuses_evicted_blocks(tiny_model):
    """``host_tokens``: a document evicted from the GPU pool is loaded back from the host pool."""
    preset = presets.trtllm(kv_tokens=64, tokens_per_block=8, host_tokens=256, max_num_seqs=2,
                            token_budget=64)
    engine = preset.engine(tiny_model, max_model_len=64)
    docs = [[3 + d] * 40 for d in range(3)]
    params = kvlab.SamplingParams(max_tokens=2, ignore_eos=True)
    for doc in docs + docs[:1]:                     # the first document again, after two others
        engine.generate([doc], params)
    assert engine.cache.stats().tiers.offloads > 0 and sum(engine.cache.stats().tiers.loads_per_tier) >= 4
    assert preset.missing == ()
