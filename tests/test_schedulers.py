"""The scheduler family on the host (no model): random traces for every scheduler x policy x cache
type with arrivals, priorities and aborts mid-flight. Every request finishes or is reported
aborted, budgets and max_num_seqs hold every step, the starvation guard keeps its promise, every
page comes back; and the specific promises of each scheduler and policy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlab.kvcache import (
    BlockedKVCache,
    CircularKVCache,
    ContiguousKVCache,
    HostTier,
    PagedKVCache,
    RadixKVCache,
)
from kvlab.schedulers import (
    FCFS,
    ChunkedScheduler,
    ContinuousScheduler,
    LongestPrefixMatch,
    PersistentScheduler,
    Priority,
    Request,
    ReserveAdmission,
    SamplingParams,
    ShortestPromptFirst,
    StarvationGuard,
    SwapPreemption,
)

CACHES = {   # the page caches get a small host tier: preemption by swap, or recompute when it is full
    "paged": lambda: PagedKVCache(num_pages=12, page_size=4, host_tier=HostTier(12)),
    "paged-prefix": lambda: PagedKVCache(num_pages=12, page_size=4, prefix_caching=True,
                                         host_tier=HostTier(12)),
    "blocked": lambda: BlockedKVCache(num_blocks=6, block_tokens=8, host_tier=HostTier(6)),
    "radix": lambda: RadixKVCache(num_pages=48, page_size=1, host_tier=HostTier(48)),
    "contiguous": lambda: ContiguousKVCache(num_slots=2, max_seq_len=48, page_size=4),
    "circular": lambda: CircularKVCache(num_pages=12, page_size=4, window=8, max_step_tokens=8),
}
POLICIES = {
    "fcfs": FCFS, "priority": Priority, "spf": ShortestPromptFirst,
    "lpm": lambda: LongestPrefixMatch(max_queue=4),
    "guard": lambda: StarvationGuard(ShortestPromptFirst(), 6),
}


def make_scheduler(kind, policy, admission=None, preemption=None, decode_steps=1):
    kw = dict(policy=policy, admission=admission, preemption=preemption, decode_steps=decode_steps)
    if kind == "continuous":
        return ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, **kw)
    if kind == "chunked":
        return ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16, max_chunk_tokens=8, **kw)
    return PersistentScheduler(num_slots=3, tokens_per_step=12, **kw)


SHARED = [5, 6, 7, 8, 9, 10, 11, 12, 13]


@st.composite
def traces(draw):
    reqs = []
    for _ in range(draw(st.integers(1, 10))):
        head = SHARED[:draw(st.sampled_from([0, 4, 9]))]
        prompt = head + draw(st.lists(st.integers(3, 99), min_size=1, max_size=20))
        reqs.append(dict(prompt=prompt, max_tokens=draw(st.integers(1, 12)), arrival=draw(st.integers(0, 8)),
                         priority=draw(st.integers(0, 2)),
                         abort_at=draw(st.one_of(st.none(), st.integers(0, 20)))))
    return (reqs, draw(st.sampled_from(["continuous", "chunked", "persistent"])),
            draw(st.sampled_from(sorted(POLICIES))), draw(st.sampled_from(sorted(CACHES))),
            draw(st.sampled_from(["optimistic", "reserve", "swap"])), draw(st.sampled_from([1, 1, 3])))


def drive(sched, cache, reqs, rng, max_steps=2000):
    """Run a trace on the host; check per-step invariants; return finish reasons by id."""
    sched.attach(cache)
    added, reasons, step = {}, {}, 0
    guard = sched.policy if isinstance(sched.policy, StarvationGuard) else None
    while step < max_steps:
        for i, r in enumerate(reqs):
            if r["arrival"] == step:
                params = SamplingParams(max_tokens=r["max_tokens"], ignore_eos=True)
                req = Request(f"r{i}", list(r["prompt"]), params, arrival_time=step + i / 100,
                              priority=r["priority"])
                try:
                    sched.add(req)
                    added[req.request_id] = req
                except ValueError:
                    reasons[req.request_id] = "rejected"
            if r["abort_at"] == step and f"r{i}" in added and not added[f"r{i}"].is_finished:
                sched.abort(f"r{i}")
        if not sched.has_unfinished() and step > 8:
            break
        waiting_before = list(sched.waiting)
        plan = sched.schedule()
        assert plan.num_tokens <= sched.max_num_batched_tokens
        assert len(plan.seqs) <= sched.max_num_seqs and len(sched.running) <= sched.max_num_seqs
        assert len({id(s.request) for s in plan.seqs}) == len(plan.seqs)
        if guard is not None:
            overdue = [r for r in waiting_before if sched.step_count - r.queued_step >= guard.max_wait_steps]
            admitted = [s.request for s in plan.seqs if s.request in waiting_before]
            if any(r in sched.waiting for r in overdue):
                assert all(r in overdue for r in admitted), "a newer request jumped an overdue one"
        sched.update(plan, rng.integers(3, 99, plan.num_rows * plan.num_steps))
        step += 1
    assert not sched.has_unfinished(), "requests left unfinished"
    for rid, req in added.items():
        reasons[rid] = req.finish_reason
    return reasons, added


@settings(max_examples=300, deadline=None)
@given(traces())
def test_every_scheduler_policy_and_cache(trace):
    """Any scheduler, policy, cache, admission and preemption, with one or three decode steps a
    plan: budgets and rows hold every step, every request ends, reserving admission never
    preempts (a multi-step plan too), and nothing is left held."""
    reqs, kind, policy, cache_kind, mode, decode_steps = trace
    cache = CACHES[cache_kind]()
    swap = mode == "swap" and cache.host_tier is not None
    sched = make_scheduler(kind, POLICIES[policy](), ReserveAdmission() if mode == "reserve" else None,
                           SwapPreemption() if swap else None, decode_steps)
    reasons, added = drive(sched, cache, reqs, np.random.default_rng(0))
    for i, r in enumerate(reqs):
        reason = reasons[f"r{i}"]
        assert reason in ("length", "abort", "rejected")
        if reason == "length":
            assert len(added[f"r{i}"].output_token_ids) == r["max_tokens"]
    if mode == "reserve":
        assert sched.num_preemptions == 0
    if swap:
        assert cache.host_tier.allocator.num_free == cache.host_tier.num_pages
    s = cache.stats()
    assert s.num_seqs == 0 and s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total


def test_chunked_prefill_never_stalls_a_decode():
    sched = ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16, max_chunk_tokens=16)
    sched.attach(PagedKVCache(num_pages=64, page_size=4))
    sched.add(Request("chat", [3, 4, 5], SamplingParams(max_tokens=30, ignore_eos=True)))
    plan = sched.schedule()
    sched.update(plan, [7])
    sched.add(Request("long", list(range(3, 103)), SamplingParams(max_tokens=2, ignore_eos=True)))
    chunks, done = 0, False
    for _ in range(20):
        plan = sched.schedule()
        by_id = {s.request.request_id: s for s in plan.seqs}
        assert by_id["chat"].num_new_tokens == 1, "the decode was stalled"
        assert plan.num_tokens <= 16
        if "long" in by_id:
            chunks += 1
            done = by_id["long"].start + by_id["long"].num_new_tokens == 100
        sched.update(plan, [7] * plan.num_rows)
        if done:
            break
    assert chunks == 7      # 100 prompt tokens in chunks of 15 beside one decode


def test_whole_prompt_scheduler_rejects_what_chunking_accepts():
    cont = ContinuousScheduler(max_num_seqs=2, max_num_batched_tokens=32)
    cont.attach(PagedKVCache(num_pages=64, page_size=4))
    with pytest.raises(ValueError, match="ChunkedScheduler"):
        cont.add(Request("a", list(range(40)), SamplingParams(max_tokens=4)))
    chunked = ChunkedScheduler(max_num_seqs=2, max_num_batched_tokens=32)
    chunked.attach(PagedKVCache(num_pages=64, page_size=4))
    chunked.add(Request("a", list(range(40)), SamplingParams(max_tokens=4)))
    assert [s.num_new_tokens for s in chunked.schedule().seqs] == [32]


def test_priority_preempts_the_lowest_priority_first():
    sched = ContinuousScheduler(max_num_seqs=3, max_num_batched_tokens=64, policy=Priority())
    sched.attach(PagedKVCache(num_pages=6, page_size=4))       # 24 tokens for three of 8 + growth
    for rid, prio in [("low", 0), ("high", 2), ("mid", 1)]:
        sched.add(Request(rid, [3] * 7, SamplingParams(max_tokens=12, ignore_eos=True), priority=prio))
    first = None
    for _ in range(20):
        plan = sched.schedule()
        if plan.preempted and first is None:
            first = plan.preempted[0].request_id
        sched.update(plan, [7] * plan.num_rows)
    assert first == "low"


@given(st.permutations([0, 1, 2, 3]), st.permutations(range(4)))
@settings(max_examples=40, deadline=None)
def test_priority_preemption_takes_the_lowest_priority_whatever_the_order(priorities, arrivals):
    """Under KV pressure the lowest-priority running request is preempted, whatever the arrival
    order and whether it was already planned in this step; a higher one never preempts itself
    while a lower one keeps running (vLLM's priority scheduling tests)."""
    sched = ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, policy=Priority())
    sched.attach(PagedKVCache(num_pages=8, page_size=4))      # 4 x 8 tokens: full after the prefill
    for i in np.argsort(arrivals):
        sched.add(Request(f"p{priorities[i]}", [3] * 8, SamplingParams(max_tokens=8, ignore_eos=True),
                          priority=priorities[i], arrival_time=float(arrivals[i])))
    plan = sched.schedule()
    assert len(plan.seqs) == 4
    sched.update(plan, [7] * plan.num_rows)
    plan = sched.schedule()                       # every request needs a new page: one must go
    assert [r.request_id for r in plan.preempted][:1] == ["p0"]
    running = {s.request.request_id for s in plan.seqs}
    for gone in plan.preempted:
        assert all(gone.priority <= sched_req.priority for sched_req in sched.running)
        assert gone.request_id not in running
    assert plan.num_tokens == len(plan.seqs) and sched.cache.stats().pages_free >= 0


def test_a_planned_victim_leaves_the_plan_and_gives_its_budget_back():
    """The low-priority request decodes first (it is older) and is already planned when the
    high-priority one needs its page: it is preempted and taken out of the plan."""
    sched = ContinuousScheduler(max_num_seqs=2, max_num_batched_tokens=64, policy=Priority())
    cache = PagedKVCache(num_pages=4, page_size=4)
    sched.attach(cache)
    sched.add(Request("low", [3] * 7, SamplingParams(max_tokens=8, ignore_eos=True), arrival_time=0.0))
    sched.add(Request("high", [3] * 8, SamplingParams(max_tokens=8, ignore_eos=True), arrival_time=1.0,
                      priority=1))
    plan = sched.schedule()
    sched.update(plan, [7] * plan.num_rows)       # "low" decodes into its page; "high" needs a third
    plan = sched.schedule()
    assert [r.request_id for r in plan.preempted] == ["low"]
    assert [(s.request.request_id, s.row) for s in plan.seqs] == [("high", 0)]
    assert plan.num_tokens == 1 and cache.stats().pages_used == 3


def test_a_partly_held_radix_node_does_not_block_admission_forever():
    """A waiting request whose prefix ends inside a cached radix node holds that node whole until
    it starts (no split while it might still be rolled back); the node's unmatched tail still
    counts as reclaimable, so a reserving admission that fits is not refused forever (found by
    the trace test: continuous, FCFS, radix page 1, ReserveAdmission)."""
    for first_output in (1, 2):          # 2: the first request's decoded token is a child node
        reqs = [dict(prompt=SHARED[:4] + [3] * 11, max_tokens=first_output, arrival=0, priority=0,
                     abort_at=None),
                dict(prompt=SHARED + [3] * 17, max_tokens=12, arrival=0, priority=0, abort_at=None)]
        sched = make_scheduler("continuous", FCFS(), ReserveAdmission())
        reasons, _ = drive(sched, CACHES["radix"](), reqs, np.random.default_rng(0))
        assert reasons == {"r0": "length", "r1": "length"}


def test_reserve_admission_never_preempts_where_optimistic_does():
    def run(admission):
        sched = ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, admission=admission)
        cache = PagedKVCache(num_pages=12, page_size=4)
        reqs = [dict(prompt=[3] * 6, max_tokens=14, arrival=0, priority=0, abort_at=None) for _ in range(5)]
        reasons, _ = drive(sched, cache, reqs, np.random.default_rng(1))
        assert all(r == "length" for r in reasons.values())
        return sched.num_preemptions
    assert run(ReserveAdmission()) == 0 < run(None)


def test_multi_step_plans_fall_back_to_one_step_where_the_cache_is_full():
    """A multi-step plan allocates every request's k positions, also past its last token; where
    the cache cannot hold them, the plan runs one step instead of preempting (a request that
    exactly fits the cache still runs, and reserving admission still never preempts)."""
    for admission in (None, ReserveAdmission()):
        sched = ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, admission=admission,
                                    decode_steps=4)
        cache = PagedKVCache(num_pages=6, page_size=4)                   # 24 tokens
        reqs = [dict(prompt=[3 + i] * 5, max_tokens=7, arrival=0, priority=0, abort_at=None)
                for i in range(2)]                                      # 2 x 12 tokens: full
        reasons, _ = drive(sched, cache, reqs, np.random.default_rng(0))
        assert set(reasons.values()) == {"length"} and sched.num_preemptions == 0


def test_a_multi_step_plan_short_of_staging_pages_runs_one_step_instead_of_preempting():
    """A KIVI cache's staging pages bound the pages a plan may fill: where k steps of every
    request do not fit them, the plan runs one step (it never preempts where one step would not)."""
    from kvlab.kvcache.formats import Kivi

    sched = ContinuousScheduler(max_num_seqs=2, decode_steps=4)
    sched.attach(PagedKVCache(num_pages=64, page_size=4, kv_format=Kivi(group_size=4, staging_pages=2)))
    for rid in "ab":
        sched.add(Request(rid, [1, 2, 3], SamplingParams(max_tokens=20), max_total_tokens=64))
    for _ in range(5):
        plan = sched.schedule()
        assert not plan.preempted and len(plan.seqs) == 2
        sched.update(plan, np.arange(plan.num_rows * plan.num_steps) + 10)
    assert sched.num_preemptions == 0


def test_a_swapped_request_returns_only_when_its_next_step_fits():
    """vLLM's swap-in rule: back only when its pages and its next step's fit, so it is never
    swapped in to be swapped out again the next step (it preempts as often as recompute)."""
    counts = {}
    for preemption in (None, SwapPreemption()):
        sched = ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, preemption=preemption)
        cache = PagedKVCache(num_pages=6, page_size=4, host_tier=HostTier(num_pages=32))
        reqs = [dict(prompt=[3 + i] * 4, max_tokens=14, arrival=0, priority=0, abort_at=None)
                for i in range(3)]
        reasons, _ = drive(sched, cache, reqs, np.random.default_rng(0))
        assert set(reasons.values()) == {"length"}
        counts[preemption is None] = sched.num_preemptions
    assert counts[False] == counts[True] == 2


def test_longest_prefix_match_orders_by_cached_tokens_and_falls_back():
    cache = RadixKVCache(num_pages=64, page_size=1)
    cache.admit("warm", SHARED + [1])
    cache.allocate("warm", 10)
    cache.commit("warm", SHARED + [1], 10)
    cache.free("warm")
    reqs = [Request("cold", [50, 51, 52], SamplingParams(), arrival_time=0),
            Request("half", SHARED[:4] + [60], SamplingParams(), arrival_time=1),
            Request("full", SHARED + [70], SamplingParams(), arrival_time=2)]
    assert [r.request_id for r in LongestPrefixMatch().order(reqs, cache)] == ["full", "half", "cold"]
    fallback = LongestPrefixMatch(max_queue=2).order(reqs, cache)
    assert [r.request_id for r in fallback] == ["cold", "half", "full"]


def test_starvation_guard_bounds_the_wait_that_shortest_first_would_stretch():
    def wait_of_long(policy):
        sched = ContinuousScheduler(max_num_seqs=1, max_num_batched_tokens=64, policy=policy)
        sched.attach(PagedKVCache(num_pages=64, page_size=4))
        sched.add(Request("long", [3] * 40, SamplingParams(max_tokens=1), arrival_time=0))
        for step in range(60):
            sched.add(Request(f"s{step}", [4], SamplingParams(max_tokens=1), arrival_time=step + 1))
            plan = sched.schedule()
            if any(s.request.request_id == "long" for s in plan.seqs):
                return step
            sched.update(plan, [7] * plan.num_rows)
        return None
    assert wait_of_long(ShortestPromptFirst()) is None           # starved for 60 steps
    assert wait_of_long(StarvationGuard(ShortestPromptFirst(), max_wait_steps=10)) <= 11


@pytest.mark.parametrize("cache_kind", ["paged", "paged-prefix", "blocked", "radix"])
@pytest.mark.parametrize("kind", ["continuous", "chunked", "persistent"])
def test_swap_preemption_resumes_without_recompute(kind, cache_kind):
    cache = {"paged": lambda: PagedKVCache(num_pages=12, page_size=4, host_tier=HostTier(64)),
             "paged-prefix": lambda: PagedKVCache(num_pages=12, page_size=4, prefix_caching=True,
                                                  host_tier=HostTier(64)),
             "blocked": lambda: BlockedKVCache(num_blocks=6, block_tokens=8, host_tier=HostTier(32)),
             "radix": lambda: RadixKVCache(num_pages=48, page_size=1, host_tier=HostTier(256))}[cache_kind]()
    sched = {"continuous": lambda: ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64,
                                                       preemption=SwapPreemption()),
             "chunked": lambda: ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16,
                                                 preemption=SwapPreemption()),
             "persistent": lambda: PersistentScheduler(num_slots=4, tokens_per_step=16,
                                                       preemption=SwapPreemption())}[kind]()
    reqs = [dict(prompt=SHARED[:5] + [20 + i], max_tokens=16, arrival=0, priority=0, abort_at=None)
            for i in range(5)]
    reasons, added = drive(sched, cache, reqs, np.random.default_rng(2))
    assert all(r == "length" for r in reasons.values())
    assert sched.num_preemptions > 0
    assert all(r.num_computed_tokens == r.num_tokens - 1 for r in added.values())
    assert cache.host_tier.allocator.num_free == cache.host_tier.num_pages
    s = cache.stats()
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total


@pytest.mark.parametrize("cache_kind", ["paged-prefix", "blocked", "radix"])
def test_aborting_a_swapped_request_frees_its_host_pages(cache_kind):
    """Regression: a request aborted while swapped out used to keep its host-tier pages."""
    cache = {"paged-prefix": lambda: PagedKVCache(num_pages=12, page_size=4, prefix_caching=True,
                                                  host_tier=HostTier(64)),
             "blocked": lambda: BlockedKVCache(num_blocks=6, block_tokens=8, host_tier=HostTier(32)),
             "radix": lambda: RadixKVCache(num_pages=48, page_size=1, host_tier=HostTier(256))}[cache_kind]()
    sched = ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=64, preemption=SwapPreemption())
    sched.attach(cache)
    for i in range(5):
        sched.add(Request(f"r{i}", SHARED[:5] + [20 + i], SamplingParams(max_tokens=16, ignore_eos=True)))
    while not sched.swapped:
        plan = sched.schedule()
        sched.update(plan, [7] * plan.num_rows)
    victim = sched.swapped[0]
    assert cache.host_tier.allocator.num_free < cache.host_tier.num_pages
    s = cache.stats()                               # the swapped pages, counted in the host tier
    assert s.host_pages_total == cache.host_tier.num_pages
    assert s.host_pages_used == cache.host_tier.num_pages - cache.host_tier.allocator.num_free > 0
    sched.abort(victim.request_id)
    assert victim.finish_reason == "abort" and victim not in sched.swapped
    while sched.has_unfinished():
        plan = sched.schedule()
        sched.update(plan, [7] * plan.num_rows)
    assert cache.host_tier.allocator.num_free == cache.host_tier.num_pages
    assert cache.stats().pages_used == 0 and cache.stats().host_pages_used == 0
