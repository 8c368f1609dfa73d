"""Engine property tests over compositions: any cache (paged, prefix-cached paged, blocked, radix,
circular, contiguous) under any scheduler (continuous, chunked, persistent), admission (optimistic,
reserving, static batches), preemption (recompute, swap to a host tier) and decode steps per
launch (one, or several: multi-step decoding), with greedy and seeded
sampled requests mixed in one batch, gives what a plain one-request-at-a-time decode gives: greedy
rows the no-cache dense decode's tokens, sampled rows the tokens the same request samples alone
(its draws depend on its seed and the token's index, not on the batch). Every page comes back, in
every tier. The simulator plans exactly what the engine plans."""

from __future__ import annotations

import dataclasses

import numpy as np
from conftest import THOROUGH, examples
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab.attention import AttentionOptions
from kvlab.bench import run_workload, simulate
from kvlab.engine import DenseReferenceDecoder
from kvlab.workloads import SyntheticRequest

WINDOW, SINKS = 12, 2

CACHES = {
    "paged": lambda host: kvlab.PagedKVCache(num_pages=12, page_size=4, host_tier=host(12)),
    "paged-prefix": lambda host: kvlab.PagedKVCache(num_pages=12, page_size=4, prefix_caching=True,
                                                    host_tier=host(12)),
    "blocked": lambda host: kvlab.BlockedKVCache(num_blocks=6, block_tokens=8, host_tier=host(6)),
    "radix": lambda host: kvlab.RadixKVCache(num_pages=48, page_size=1, host_tier=host(48)),
    "circular": lambda host: kvlab.CircularKVCache(num_pages=24, page_size=4, window=WINDOW,
                                                   num_sink_tokens=SINKS, max_step_tokens=16),
    "contiguous": lambda host: kvlab.ContiguousKVCache(num_slots=2, max_seq_len=64, page_size=4),
}
SWAPS = ("paged", "paged-prefix", "blocked", "radix")      # the caches with a host tier


def scheduler(kind, admission, preemption, decode_steps=1):
    parts = dict(admission=admission, preemption=preemption, decode_steps=decode_steps)
    if kind == "continuous":
        return kvlab.ContinuousScheduler(max_num_seqs=3, max_num_batched_tokens=48, **parts)
    if kind == "chunked":
        return kvlab.ChunkedScheduler(max_num_seqs=3, max_num_batched_tokens=16, max_chunk_tokens=8, **parts)
    return kvlab.PersistentScheduler(num_slots=3, tokens_per_step=16, **parts)


@st.composite
def compositions(draw):
    cache = draw(st.sampled_from(sorted(CACHES)))
    sched = draw(st.sampled_from(["continuous", "chunked", "persistent"]))
    admission = draw(st.sampled_from([None, kvlab.ReserveAdmission(), kvlab.StaticBatchAdmission()]))
    swap = cache in SWAPS and draw(st.booleans())
    reqs = []
    for _ in range(draw(st.integers(1, 5))):
        prompt = draw(st.lists(st.integers(3, 255), min_size=1, max_size=16 if cache == "circular" else 24))
        sampled = cache != "circular" and draw(st.booleans())
        reqs.append((prompt, draw(st.integers(1, 10)), draw(st.integers(0, 4)),
                     draw(st.integers(0, 2 ** 32 - 1)) if sampled else None))
    steps_ahead, decode_steps = draw(st.sampled_from([0, 1])), draw(st.sampled_from([1, 3]))
    return cache, sched, admission, swap, reqs, steps_ahead, decode_steps


def params_of(max_tokens, seed):
    if seed is None:
        return kvlab.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return kvlab.SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.9, top_k=40, seed=seed)


def alone(model, prompt, max_tokens, seed, circular: bool):
    """The plain decode: greedy through the no-cache dense model (windowed for the circular
    cache), sampled through an engine serving this one request alone."""
    if seed is None:
        options = (AttentionOptions(sm_scale=model.attention_options.sm_scale, sliding_window=WINDOW,
                                    num_sink_tokens=SINKS) if circular else None)
        return DenseReferenceDecoder(model, options).greedy(prompt, max_tokens)
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=16, page_size=8),
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=1), max_model_len=128)
    return engine.generate([prompt], params_of(max_tokens, seed))[0].token_ids


@settings(max_examples=examples(24))
@given(compositions())
def test_any_composition_equals_one_request_at_a_time(tiny_model, composition):
    cache_kind, sched_kind, admission, swap, reqs, steps_ahead, decode_steps = composition
    host = kvlab.HostTier if swap else (lambda n: None)
    cache = CACHES[cache_kind](host)
    sched = scheduler(sched_kind, admission, kvlab.SwapPreemption() if swap else None, decode_steps)
    engine = kvlab.Engine(tiny_model, cache=cache, scheduler=sched, max_model_len=128,
                          steps_ahead=steps_ahead)
    pending = sorted(enumerate(reqs), key=lambda x: (x[1][2], x[0]))
    ids, got, step = {}, {}, 0
    while pending or engine.has_unfinished():
        while pending and pending[0][1][2] <= step:
            i, (prompt, max_tokens, _, seed) = pending.pop(0)
            ids[i] = engine.add_request(prompt, params_of(max_tokens, seed))
            got[ids[i]] = []
        for ev in engine.step():
            got[ev.request_id].extend(ev.new_token_ids)
        step += 1
    for i, (prompt, max_tokens, _, seed) in enumerate(reqs):
        assert got[ids[i]] == alone(tiny_model, prompt, max_tokens, seed, cache_kind == "circular"), i
    stats = cache.stats()
    assert stats.pages_used == 0 and stats.num_seqs == 0, "pages leaked"
    if swap:
        assert cache.host_tier.allocator.num_free == cache.host_tier.num_pages, "host pages leaked"


def record_plans(scheduler):
    """Wrap ``scheduler.schedule`` to record every plan as its decode steps and (request id,
    start, tokens, row) per sequence."""
    plans, schedule = [], scheduler.schedule

    def recording():
        plan = schedule()
        plans.append((plan.num_steps, [(s.request.request_id, s.start, s.num_new_tokens, s.row)
                                       for s in plan.seqs]))
        return plan
    scheduler.schedule = recording
    return plans


@settings(max_examples=12 if THOROUGH else 4)
@given(st.sampled_from(["paged-prefix", "radix", "blocked"]),
       st.sampled_from(["continuous", "chunked", "persistent"]),
       st.lists(st.tuples(st.lists(st.integers(3, 255), min_size=1, max_size=24), st.integers(1, 8)),
                min_size=1, max_size=6), st.sampled_from([1, 4]))
def test_the_simulator_plans_what_the_engine_plans(tiny_model, cache_kind, sched_kind, reqs, decode_steps):
    """The simulator is the engine's serial loop with a cost model instead of the model: on the
    same trace (a cache small enough to preempt) it makes the very same step plans, multi-step
    decodes included."""
    workload = [SyntheticRequest(list(p), n) for p, n in reqs]
    runs = []
    for simulated in (False, True):
        cache = CACHES[cache_kind](lambda n: None)
        sched = scheduler(sched_kind, None, None, decode_steps)
        plans = record_plans(sched)
        if simulated:
            simulate(sched, cache, workload)
        else:
            run_workload(kvlab.Engine(tiny_model, cache=cache, scheduler=sched, max_model_len=128,
                                      steps_ahead=0),
                         [dataclasses.replace(r) for r in workload])
        runs.append(plans)
    assert runs[0] == runs[1] and runs[0]


def test_default_engine_needs_only_a_model(tiny_model):
    """``kvlab.Engine(model)``: a paged cache sized from free memory (capped at what the
    scheduler can use) and a chunked-prefill scheduler, vLLM's defaults."""
    engine = kvlab.Engine(tiny_model)
    assert isinstance(engine.cache, kvlab.PagedKVCache)
    assert isinstance(engine.scheduler, kvlab.ChunkedScheduler)
    cap = engine.scheduler.max_num_seqs * tiny_model.config.max_position_embeddings
    assert engine.cache.capacity_tokens >= min(cap, 1)
    out = engine.generate([[5, 6, 7]], kvlab.SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert out.token_ids == DenseReferenceDecoder(tiny_model).greedy([5, 6, 7], 4)
    assert np.isfinite(engine.cache.capacity_tokens)


class CharTokenizer:
    """Token t is the character chr(0x3b1 + t) (Greek and beyond: one character a token)."""

    eos_token_ids = ()
    special_token_ids = frozenset()

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 0x3b1 for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(0x3b1 + int(t)) for t in ids)


@settings(max_examples=12 if THOROUGH else 4)
@given(st.lists(st.integers(3, 255), min_size=1, max_size=12), st.integers(0, 10), st.integers(2, 4),
       st.sampled_from(["continuous", "chunked"]), st.sampled_from([1, 3]))
def test_stop_strings_that_span_steps(tiny_model, prompt, at, length, sched_kind, decode_steps):
    """A stop string made of several generated tokens (so it completes over several steps) ends
    the request at the token that completes it; the text stops right before it, the streamed
    pieces add up to that text, and no piece ever shows part of the stop string. With
    multi-step decodes the string may end inside a launch's tokens: the rest are dropped."""
    tok = CharTokenizer()
    full = DenseReferenceDecoder(tiny_model).greedy(prompt, 16)
    text = tok.decode(full)
    stop = text[at:at + length]
    first = text.find(stop)
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=16, page_size=4), tokenizer=tok,
                          scheduler=scheduler(sched_kind, None, None, decode_steps), max_model_len=128)
    params = kvlab.SamplingParams(max_tokens=16, stop=(stop,))
    streamed = [ev.new_text for ev in engine.stream([prompt], params)]
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=16, page_size=4), tokenizer=tok,
                          scheduler=scheduler(sched_kind, None, None, decode_steps), max_model_len=128)
    done = engine.generate([prompt], kvlab.SamplingParams(max_tokens=16, stop=(stop,)))[0]
    assert done.text == text[:first] == "".join(streamed)
    assert done.token_ids == full[:first + len(stop)]
    assert done.finish_reason == "stop" and done.stop_reason == stop
    assert all(stop not in piece for piece in streamed)
    assert engine.cache.stats().pages_used == 0


def test_stop_token_ids_and_min_tokens(tiny_model):
    """A stop token id ends the request (kept in the output, ``stop_reason`` names it), but not
    before ``min_tokens`` tokens."""
    full = DenseReferenceDecoder(tiny_model).greedy([5, 6, 7], 12)
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=16, page_size=4), max_model_len=128)
    stop_id = full[2]
    first = full.index(stop_id)
    done = engine.generate([[5, 6, 7]], kvlab.SamplingParams(max_tokens=12, stop_token_ids=(stop_id,)))[0]
    assert done.token_ids == full[:first + 1] and done.stop_reason == stop_id and done.finish_reason == "stop"
    done = engine.generate([[5, 6, 7]], kvlab.SamplingParams(max_tokens=12, stop_token_ids=(stop_id,),
                                                             min_tokens=first + 2))[0]
    assert done.token_ids == banned_greedy(tiny_model, [5, 6, 7], 12, stop_id, first + 2)


def banned_greedy(model, prompt, max_tokens, stop_id, min_tokens) -> list[int]:
    """The reference decode with ``stop_id`` unsampleable before ``min_tokens`` (vLLM's rule) and
    ending the request at or after it."""
    ref, out = DenseReferenceDecoder(model), []
    while len(out) < max_tokens:
        logits = np.array(ref.next_logits(list(prompt) + out))
        if len(out) < min_tokens:
            logits[stop_id] = -np.inf
        out.append(int(np.argmax(logits)))
        if out[-1] == stop_id:
            break
    return out
