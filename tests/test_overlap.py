"""Planning ahead: the engine plans and launches step N+1 before it reads step N's tokens
(``Engine(steps_ahead=1)``, the default). Outputs, stops, aborts and streams equal the serial
loop's; a plan marks its tokens pending; a step moves nothing but its input buffer and tokens."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from engine_helpers import finish_after_abort

import kvlab
from kvlab.engine.step_inputs import InputLayout
from kvlab.schedulers.plan import FUTURE_TOKEN

PROMPTS = [[5, 9, 14, 3], [7] * 11, [20, 21], list(range(30, 47))]


def engine(model, steps_ahead, **kw):
    return kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=48, page_size=4),
                        scheduler=kvlab.ChunkedScheduler(max_num_seqs=3, max_num_batched_tokens=16),
                        steps_ahead=steps_ahead, **kw)


def all_pages_back(eng) -> bool:
    s = eng.cache.stats()
    return s.pages_used == 0 and s.num_seqs == 0


def test_plan_ahead_and_serial_loops_agree_on_every_kind_of_request(tiny_model):
    greedy = kvlab.SamplingParams(max_tokens=12, ignore_eos=True)
    plain = engine(tiny_model, 0).generate(PROMPTS, greedy)
    stop_at = plain[0].token_ids[4]                 # a token greedy decoding reaches at step 5
    params = [kvlab.SamplingParams(max_tokens=12, stop_token_ids=(stop_at,)),
              kvlab.SamplingParams(max_tokens=9, temperature=0.8, seed=3, logprobs=2, n=2),
              kvlab.SamplingParams(max_tokens=7, repetition_penalty=1.3, frequency_penalty=0.5,
                                   min_tokens=5, ignore_eos=True),
              kvlab.SamplingParams(max_tokens=10, prompt_logprobs=1, top_p=0.9, temperature=1.0,
                                   seed=11)]
    runs = []
    for steps_ahead in (0, 1):
        eng = engine(tiny_model, steps_ahead)
        runs.append(eng.generate(PROMPTS, params))
        assert all_pages_back(eng)
    serial, ahead = runs
    assert ahead[0].finish_reason == "stop" and ahead[0].stop_reason == stop_at
    assert ahead[0].token_ids == plain[0].token_ids[:5]      # nothing past the stop token
    for a, b in zip(serial, ahead):
        assert (a.token_ids, a.finish_reason, a.stop_reason) == (b.token_ids, b.finish_reason,
                                                                 b.stop_reason)
        assert [s.token_ids for s in a.samples or []] == [s.token_ids for s in b.samples or []]
    for a, b in zip(serial[1].samples, ahead[1].samples):
        for x, y in zip(a.logprobs, b.logprobs):
            assert x.keys() == y.keys() and np.allclose(list(x.values()), list(y.values()), atol=1e-5)
    assert len(ahead[3].prompt_logprobs) == len(PROMPTS[3])


def test_abort_while_its_step_runs_frees_everything_and_the_others_go_on(tiny_model):
    greedy = kvlab.SamplingParams(max_tokens=10, ignore_eos=True)
    expected = engine(tiny_model, 0).generate(PROMPTS[:3], greedy)
    eng = engine(tiny_model, 1)
    ids = [eng.add_request(p, greedy, keep_completion=True) for p in PROMPTS[:3]]
    for _ in range(4):
        eng.step()
    assert eng._in_flight, "a launched step waits to be read"
    eng.abort(ids[1])
    done = finish_after_abort(eng, ids[1])
    assert done[ids[0]].token_ids == expected[0].token_ids
    assert done[ids[2]].token_ids == expected[2].token_ids
    assert all_pages_back(eng)


def test_streamed_pieces_add_up_to_the_completion(tiny_model):
    params = kvlab.SamplingParams(max_tokens=8)
    expected = [c.token_ids for c in engine(tiny_model, 0).generate(PROMPTS, params)]
    eng = engine(tiny_model, 1)
    got, finished = {}, []
    for ev in eng.stream(PROMPTS, params):
        assert ev.request_id not in finished, "no event after a request's last"
        got.setdefault(ev.request_id, []).extend(ev.new_token_ids)
        if ev.finished:
            finished.append(ev.request_id)
    assert sorted(finished) == sorted(got) and len(finished) == len(PROMPTS)
    assert [got[rid] for rid in sorted(got, key=lambda r: int(r.split("-")[-1]))] == expected


def test_a_plan_marks_its_tokens_pending_and_the_next_plan_reads_them_on_the_device():
    sched = kvlab.ContinuousScheduler(max_num_seqs=2)
    cache = kvlab.PagedKVCache(num_pages=8, page_size=4)
    sched.attach(cache)
    req = kvlab.schedulers.Request("r", [1, 2, 3], kvlab.SamplingParams(max_tokens=3))
    sched.add(req)
    first = sched.schedule()                            # the prefill samples output token 0
    assert [(s.start, s.num_new_tokens, s.sample_index) for s in first.seqs] == [(0, 3, 0)]
    assert (req.num_computed_tokens, req.num_pending) == (3, 1)
    second = sched.schedule()                           # before ``update(first)``
    assert [(s.start, s.num_new_tokens, s.sample_index) for s in second.seqs] == [(3, 1, 1)]
    assert second.token_ids().tolist() == [FUTURE_TOKEN] and req.num_pending == 2
    sched.update(first, [7])
    third = sched.schedule()
    assert [(s.start, s.sample_index) for s in third.seqs] == [(4, 2)] and req.ends_by_length
    assert sched.schedule().is_empty                    # the pending tokens end it: nothing to plan
    sched.update(second, [8])
    sched.update(third, [9])
    assert req.output_token_ids == [7, 8, 9] and req.finish_reason == "length"
    assert cache.stats().pages_used == 0


def test_a_decode_step_moves_only_its_input_buffer_in_and_its_tokens_out(tiny_model, monkeypatch):
    eng = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=64, page_size=4),
                       scheduler=kvlab.ContinuousScheduler(max_num_seqs=4))
    for p in PROMPTS:
        eng.add_request(p, kvlab.SamplingParams(max_tokens=40, ignore_eos=True))
    for _ in range(12):                                 # prefills, then decodes of every shape
        eng.step()
    puts, gets = [], []
    put, get = jax.device_put, jax.device_get
    monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: puts.append(x) or put(x, *a, **k))
    monkeypatch.setattr(jax, "device_get", lambda x: gets.append(x) or get(x))
    with jax.transfer_guard("disallow"):                # any implicit transfer raises
        for _ in range(6):                              # crossing page boundaries: table changes
            eng.step()
    assert len(puts) == 6 and len(gets) == 6
    layout = InputLayout(tokens=16, rows=4, changes=eng.runner.table.change_capacity)  # 16: the
    for buffer, sampling in puts:                       # smallest token bucket
        assert sampling is None and isinstance(buffer, np.ndarray) and buffer.dtype == np.int32
        assert buffer.size == layout.size               # tokens, positions, slots, rows, changes
        assert (buffer[:4] < 0).all()                   # every decode's token comes from the device
    assert all(len(g) == 1 and g[0].shape == (4,) for g in gets)     # one int32 token per row


def test_steps_ahead_must_be_zero_or_one(tiny_model):
    with pytest.raises(ValueError, match="steps_ahead must be 0"):
        engine(tiny_model, 2)


@pytest.mark.parametrize("cache", [lambda: kvlab.PagedKVCache(num_pages=64, page_size=4, prefix_caching=True),
                                   lambda: kvlab.RadixKVCache(num_pages=256, page_size=1)])
def test_planning_ahead_reuses_prefixes_as_the_serial_loop_does(tiny_model, cache):
    """A plan's tokens are committed to the cache when it is made, so the plan after it may reuse
    them although the step computing them has not been read yet."""
    system = list(range(40, 72))
    prompts = [system + [80 + i, 90 + i] for i in range(6)]
    params = kvlab.SamplingParams(max_tokens=4, ignore_eos=True)
    runs = []
    for steps_ahead in (0, 1):
        eng = kvlab.Engine(tiny_model, cache=cache(), steps_ahead=steps_ahead,
                           scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=40))
        runs.append(([c.token_ids for c in eng.generate(prompts, params)], eng.cache.stats().hit_rate))
        assert eng.cache.stats().pages_used == 0
    (serial, serial_hits), (ahead, ahead_hits) = runs
    assert ahead == serial and ahead_hits == serial_hits > 0.3
