"""Multi-step decoding (``decode_steps`` k > 1): a plan of only decodes runs k decode steps in one
launch when nothing else could run. When it does and when it does not, its pages, its pending
tokens, its stops in the middle of a launch, aborts while it runs, and the host work it saves."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from engine_helpers import finish_after_abort
from hypothesis import given
from hypothesis import strategies as st

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.schedulers import Request

PROMPTS = [[5, 9, 14, 3], [7] * 11, [20, 21]]


def attached(max_num_seqs=2, decode_steps=4, num_pages=32, **kw):
    sched = kvlab.ContinuousScheduler(max_num_seqs=max_num_seqs, decode_steps=decode_steps, **kw)
    cache = kvlab.PagedKVCache(num_pages=num_pages, page_size=4)
    sched.attach(cache)
    return sched, cache


def request(rid, prompt=(1, 2, 3), **params):
    params.setdefault("max_tokens", 20)
    return Request(rid, list(prompt), kvlab.SamplingParams(**params), max_total_tokens=64)


def test_a_plan_of_decodes_with_nothing_waiting_runs_k_steps():
    sched, cache = attached()
    sched.add(request("r"))
    prefill = sched.schedule()
    assert prefill.num_steps == 1                         # a prefill: one step
    sched.update(prefill, [7])
    burst = sched.schedule()
    assert burst.num_steps == 4
    assert [(s.start, s.num_new_tokens, s.sample_index) for s in burst.seqs] == [(3, 1, 1)]
    assert cache.num_tokens("r") == 3 + 4                 # pages for the four positions it writes
    req = burst.seqs[0].request
    assert (req.num_computed_tokens, req.num_pending) == (7, 4)
    outputs = sched.update(burst, np.array([11, 12, 13, 14], np.int32))   # step j's token of row 0
    assert outputs[0].new_token_ids == [11, 12, 13, 14] and req.output_token_ids == [7, 11, 12, 13, 14]
    assert req.num_pending == 0 and not outputs[0].finished


@pytest.mark.parametrize("case", ["admissible-waiting", "logprobs", "min-tokens", "context"])
def test_one_step_whenever_a_request_cannot_take_k(case):
    sched, _ = attached(max_num_seqs=3, max_num_batched_tokens=64)
    params = {"logprobs": dict(logprobs=1), "min-tokens": dict(min_tokens=5)}.get(case, {})
    sched.add(request("a"))
    sched.add(request("b", **params))
    if case == "context":
        sched.waiting[-1].max_total_tokens = 6            # 3 prompt tokens + 3: no room for 4 steps
    first = sched.schedule()
    sched.update(first, [7, 8])
    if case == "admissible-waiting":
        sched.add(request("c"))                           # a free row: it must not wait a burst
    assert sched.schedule().num_steps == 1


def test_full_rows_let_a_queue_wait_for_the_burst():
    sched, _ = attached(max_num_seqs=1)
    sched.add(request("a"))
    sched.add(request("b"))
    sched.update(sched.schedule(), [7])
    plan = sched.schedule()
    assert plan.num_steps == 4 and len(sched.waiting) == 1      # no row for "b" anyway


def test_decode_steps_must_be_a_positive_integer():
    for bad in (0, -2, 1.5, "4"):
        with pytest.raises(ValueError, match="decode_steps must be an integer >= 1"):
            kvlab.ChunkedScheduler(decode_steps=bad)


def test_a_stop_inside_a_launch_drops_the_tokens_after_it_and_frees_the_pages(tiny_model):
    full = DenseReferenceDecoder(tiny_model).greedy(PROMPTS[0], 16)
    stop = full[6]
    first = full.index(stop)
    eng = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=32, page_size=4),
                       scheduler=kvlab.ContinuousScheduler(max_num_seqs=2, decode_steps=4))
    events = list(eng.stream([PROMPTS[0]], kvlab.SamplingParams(max_tokens=16, stop_token_ids=(stop,))))
    tokens = [t for ev in events for t in ev.new_token_ids]
    assert tokens == full[:first + 1] and events[-1].finished and events[-1].finish_reason == "stop"
    assert max(len(ev.new_token_ids) for ev in events) == 4     # tokens arrive four at a time
    assert eng.cache.stats().pages_used == 0


def test_abort_while_a_burst_runs_frees_everything_and_the_others_go_on(tiny_model):
    greedy = kvlab.SamplingParams(max_tokens=14, ignore_eos=True)
    dec = DenseReferenceDecoder(tiny_model)
    eng = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=32, page_size=4),
                       scheduler=kvlab.ContinuousScheduler(max_num_seqs=3, decode_steps=4))
    ids = [eng.add_request(p, greedy, keep_completion=True) for p in PROMPTS]
    while not (eng._in_flight and eng._in_flight[-1][0].num_steps == 4):
        eng.step()
    eng.abort(ids[1])
    done = finish_after_abort(eng, ids[1])
    assert done[ids[0]].token_ids == dec.greedy(PROMPTS[0], 14)
    assert done[ids[2]].token_ids == dec.greedy(PROMPTS[2], 14)
    s = eng.cache.stats()
    assert s.pages_used == 0 and s.num_seqs == 0


def test_a_multi_step_plan_moves_one_input_buffer_in_and_k_tokens_per_row_out(tiny_model, monkeypatch):
    eng = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=64, page_size=4),
                       scheduler=kvlab.ContinuousScheduler(max_num_seqs=4, decode_steps=3))
    for p in PROMPTS:
        eng.add_request(p, kvlab.SamplingParams(max_tokens=40, ignore_eos=True))
    for _ in range(6):
        eng.step()
    steps_before = eng.executor.steps
    puts, gets = [], []
    put, get = jax.device_put, jax.device_get
    monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: puts.append(x) or put(x, *a, **k))
    monkeypatch.setattr(jax, "device_get", lambda x: gets.append(x) or get(x))
    with jax.transfer_guard("disallow"):                # any implicit transfer raises
        for _ in range(4):
            eng.step()
    assert eng.executor.steps - steps_before == 4       # plans, each launching three steps
    assert len(puts) == 4 and all(isinstance(buffer, np.ndarray) for buffer, _ in puts)
    assert len(gets) == 4 and all(len(g) == 3 and all(a.shape == (4,) for a in g) for g in gets)


def test_the_host_plans_once_per_burst(tiny_model):
    """k decode steps per launch: the engine runs a k-th of the launches (and of the plans)."""
    prompts = [[3 + i, 4, 5] for i in range(4)]
    params = kvlab.SamplingParams(max_tokens=25, ignore_eos=True)
    launches = {}
    for k in (1, 5):
        eng = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=64, page_size=4),
                           scheduler=kvlab.ContinuousScheduler(max_num_seqs=4, decode_steps=k))
        outs = eng.generate(prompts, params)
        launches[k] = eng.executor.steps
        assert all(len(c.token_ids) == 25 for c in outs)
    assert launches[1] == 25 and launches[5] == 1 + math.ceil(24 / 5)   # the prefill, then bursts


def test_a_sweep_varies_decode_steps_on_the_simulator():
    """``decode_steps`` is a field of the ``custom`` composition: a sweep over it on the host
    simulator serves every token either way, in fewer launches with more steps a plan."""
    from kvlab.bench.sweep import simulate_preset, sweep
    from kvlab.workloads import shared_prefix

    reqs = shared_prefix(groups=2, prompts_per_group=3, system_tokens=32, question_tokens=4,
                         output_tokens=12, seed=0)
    rows = sweep(simulate_preset, {"decode_steps": [1, 4]},
                 base=dict(preset="custom", requests=reqs, kv_tokens=2048, max_num_seqs=8, token_budget=256),
                 progress=False)
    assert [r["decode_steps"] for r in rows] == [1, 4]
    assert rows[0]["output_tokens"] == rows[1]["output_tokens"] == 6 * 12
    assert rows[1]["steps"] < rows[0]["steps"]


def test_penalized_and_sampled_requests_draw_the_tokens_of_one_step_a_plan(tiny_model):
    """Penalties (token counts on the device, each step adding its own) and seeded sampling run
    multi-step and give exactly the tokens of one step a plan."""
    params = [kvlab.SamplingParams(max_tokens=16, repetition_penalty=1.5, frequency_penalty=0.7,
                                   ignore_eos=True),
              kvlab.SamplingParams(max_tokens=13, temperature=0.9, top_k=20, seed=5, presence_penalty=0.8,
                                   ignore_eos=True),
              kvlab.SamplingParams(max_tokens=11, ignore_eos=True)]
    runs = {}
    for k in (1, 4):
        eng = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=48, page_size=4),
                           scheduler=kvlab.ContinuousScheduler(max_num_seqs=3, decode_steps=k))
        runs[k] = [c.token_ids for c in eng.generate(PROMPTS, params)]
        if k == 4:
            assert eng.executor.steps < 16               # multi-step plans ran
    assert runs[4] == runs[1]


class Chars:
    """A detokenizer: token t is the character chr(t + 60)."""

    def __init__(self):
        self.text = ""

    def push(self, ids):
        new = "".join(chr(t + 60) for t in ids)
        self.text += new
        return new

    def flush(self):
        self.text += "|"                    # the request ended: shows how often
        return "|"


@given(data=st.data(), prompt=st.integers(1, 6), done=st.integers(0, 5), pending=st.integers(0, 8),
       block=st.lists(st.integers(0, 5), max_size=8), eos_as=st.sampled_from([tuple, list]),
       ended=st.sampled_from([None, "abort"]))
def test_a_block_of_tokens_is_read_as_one_token_at_a_time(data, prompt, done, pending, block, eos_as, ended):
    """``Request.append_tokens`` (a multi-step plan's read) leaves a request as ``append_token``
    on each token in turn, stopping at the first that ends it: stop ids, EOS (or not, with
    ignore_eos), min_tokens, max_tokens, the context and stop strings; an empty block, a request
    that had ended already and EOS ids given as a list too."""
    params = dict(max_tokens=data.draw(st.integers(1, 12)), min_tokens=data.draw(st.integers(0, 6)),
                  ignore_eos=data.draw(st.booleans()),
                  stop_token_ids=tuple(data.draw(st.lists(st.integers(0, 5), max_size=2))),
                  stop=tuple(data.draw(st.lists(st.sampled_from(["A", "BC", "@A"]), max_size=2))))
    params["min_tokens"] = min(params["min_tokens"], params["max_tokens"])
    context = data.draw(st.none() | st.integers(prompt + done + 1, prompt + done + 10))
    text = data.draw(st.booleans())

    def fresh():
        r = Request("r", [1] * prompt, kvlab.SamplingParams(**params), eos_token_ids=eos_as([2]),
                    max_total_tokens=context)
        r.finish_reason = ended
        r.output_token_ids = [9] * min(done, params["max_tokens"] - 1)
        r.num_pending = pending
        if text:
            r.output_text = kvlab.schedulers.stopping.OutputText(Chars(), stops=params["stop"])
        return r
    one_by_one, block_read = fresh(), fresh()
    kept = 0
    for token in block:
        one_by_one.append_token(token, 1.0)
        kept += 1
        if one_by_one.finish_reason is not None:
            break
    assert block_read.append_tokens(block, 1.0) == kept
    for name in ("output_token_ids", "token_times", "num_pending", "finish_reason", "stop_reason"):
        assert getattr(block_read, name) == getattr(one_by_one, name), name
    assert block_read.text == one_by_one.text
