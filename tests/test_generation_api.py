"""The generation API a vLLM or transformers user expects: prompts in the shapes they pass, one
SamplingParams per prompt, n samples, logprobs, min_p, min_tokens, max_tokens clamped to the
context, a cache that serves one engine, completions that explain themselves."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.engine.sampling import Sampler, SamplingArrays

GREEDY = kvlab.SamplingParams(max_tokens=5, ignore_eos=True)


def make_engine(model, **kwargs):
    return kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=64, page_size=8),
                        scheduler=kvlab.ChunkedScheduler(max_num_seqs=8, max_num_batched_tokens=64), **kwargs)


def test_prompt_shapes_and_params_per_prompt(tiny_model):
    engine = make_engine(tiny_model)
    ref = DenseReferenceDecoder(tiny_model)
    one = engine.generate([3, 4, 5], GREEDY)                     # token ids: one prompt, not three
    assert len(one) == 1 and one[0].token_ids == ref.greedy([3, 4, 5], 5)
    params = [kvlab.SamplingParams(max_tokens=2, ignore_eos=True),
              kvlab.SamplingParams(max_tokens=4, ignore_eos=True)]
    two = engine.generate([[3, 4], [6, 7, 8]], params)
    assert [len(c.token_ids) for c in two] == [2, 4]
    assert two[1].token_ids == ref.greedy([6, 7, 8], 4)
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        engine.generate([[1], [2], [3]], params)
    assert not engine.has_unfinished() and engine.cache.stats().pages_used == 0


def test_an_integer_array_is_one_prompt_and_other_arrays_are_lists_of_prompts():
    """A 1-D integer array is one prompt of token ids; a 2-D one, an array of strings or of
    token lists is a list of prompts (``as_prompt_list``)."""
    import numpy as np

    from kvlab.engine.intake import as_prompt_list

    assert [list(p) for p in as_prompt_list(np.array([3, 4, 5]))] == [[3, 4, 5]]
    assert [list(p) for p in as_prompt_list(np.array([[3, 4], [5, 6]]))] == [[3, 4], [5, 6]]
    assert as_prompt_list(np.array(["hi", "yo"])) == ["hi", "yo"]
    ragged = np.empty(2, object)
    ragged[:] = [[5, 6], [7]]
    assert as_prompt_list(ragged) == [[5, 6], [7]]


def test_a_text_prompt_is_one_prompt(smollm2):
    model, tokenizer = smollm2
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=32, page_size=16), tokenizer=tokenizer)
    out = engine.generate("The capital of France is", kvlab.SamplingParams(max_tokens=3))
    assert len(out) == 1
    assert out[0].prompt_token_ids == tokenizer.encode("The capital of France is")


def test_max_tokens_beyond_the_context_is_clamped_with_a_warning(tiny_model):
    engine = make_engine(tiny_model, max_model_len=40)
    with pytest.warns(UserWarning, match="clamped to 30"):
        out = engine.generate([list(range(3, 13))], kvlab.SamplingParams(max_tokens=10 ** 6, ignore_eos=True))
    assert len(out[0].token_ids) == 30 and out[0].finish_reason == "length"


def test_n_samples_are_the_seeded_single_requests(tiny_model):
    hot = kvlab.SamplingParams(max_tokens=6, temperature=1.0, seed=11, ignore_eos=True)
    grouped = make_engine(tiny_model).generate([[5, 6, 7]], kvlab.SamplingParams(
        n=3, max_tokens=6, temperature=1.0, seed=11, ignore_eos=True))[0]
    assert len(grouped.samples) == 3 and grouped.token_ids == grouped.samples[0].token_ids
    for j, sample in enumerate(grouped.samples):
        alone = make_engine(tiny_model).generate([[5, 6, 7]], hot.with_seed(11 + j))[0]
        assert sample.token_ids == alone.token_ids
    assert len({tuple(s.token_ids) for s in grouped.samples}) > 1, "three samples, all equal"
    assert "samples=3" in repr(grouped)


def test_logprobs_match_the_reference_log_softmax(tiny_model):
    engine = make_engine(tiny_model)
    out = engine.generate([[3, 9, 4]], kvlab.SamplingParams(max_tokens=4, logprobs=3, ignore_eos=True))[0]
    ref = DenseReferenceDecoder(tiny_model)
    assert len(out.logprobs) == len(out.token_ids) == 4
    seq = [3, 9, 4]
    for token, entry in zip(out.token_ids, out.logprobs):
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(ref.next_logits(seq))))
        assert list(entry)[0] == token
        assert entry[token] == pytest.approx(float(logp[token]), abs=1e-4)
        best = np.argsort(-logp)[:3]
        assert set(best.tolist()) <= set(entry)
        for t in best:
            assert entry[int(t)] == pytest.approx(float(logp[t]), abs=1e-4)
        seq.append(token)
    plain = make_engine(tiny_model).generate([[3, 9, 4]], kvlab.SamplingParams(max_tokens=4,
                                                                               ignore_eos=True))[0]
    assert plain.logprobs is None and plain.token_ids == out.token_ids


def test_min_tokens_bans_eos_until_reached(tiny_model):
    ref = DenseReferenceDecoder(tiny_model)
    first = ref.greedy([8, 9], 1)[0]
    engine = make_engine(tiny_model)
    engine.intake.eos_token_ids = (first,)               # the model's greedy first token is "EOS"
    stopped = engine.generate([[8, 9]], kvlab.SamplingParams(max_tokens=5))[0]
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    held = engine.generate([[8, 9]], kvlab.SamplingParams(max_tokens=5, min_tokens=3))[0]
    assert first not in held.token_ids[:3] and len(held.token_ids) >= 3
    logits = np.array(ref.next_logits([8, 9]))
    logits[first] = -np.inf
    assert held.token_ids[0] == int(np.argmax(logits))     # the best token that is not EOS
    stop_ids = engine.generate([[8, 9]], kvlab.SamplingParams(max_tokens=5, min_tokens=2,
                                                               stop_token_ids=(held.token_ids[0],)))[0]
    assert held.token_ids[0] not in stop_ids.token_ids[:2]


def test_min_p_keeps_only_tokens_near_the_best():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 256, jnp.float32))
    params = [kvlab.SamplingParams(temperature=1.0, min_p=0.5)] * 256
    arrays = SamplingArrays.pack(256, list(range(256)), params, seeds=[3] * 256, counters=list(range(256)))
    tokens = np.asarray(jax.jit(Sampler())(logits, arrays).tokens)
    assert set(tokens.tolist()) == {0, 1}                 # 0.15 and 0.05 are below 0.5 * 0.5
    share = (tokens == 0).mean()
    assert abs(share - 0.5 / 0.8) < 0.1


def test_a_cache_serves_one_engine(tiny_model):
    cache = kvlab.PagedKVCache(num_pages=32, page_size=8, prefix_caching=True)
    first = kvlab.Engine(tiny_model, cache=cache)
    first.generate([[3, 4, 5, 6, 7, 8, 9, 10, 11]], GREEDY)
    with pytest.raises(ValueError, match="already serves another engine"):
        kvlab.Engine(tiny_model, cache=cache)
    del first
    gc.collect()
    second = kvlab.Engine(tiny_model, cache=cache)          # the first is gone: its prefixes too
    out = second.generate([[3, 4, 5, 6, 7, 8, 9, 10, 11]], GREEDY)[0]
    assert out.token_ids == DenseReferenceDecoder(tiny_model).greedy([3, 4, 5, 6, 7, 8, 9, 10, 11], 5)
    assert cache.stats().prefix_hit_tokens == 0


def test_completion_repr_timings_and_metrics(tiny_model):
    engine = make_engine(tiny_model)
    out = engine.generate([[3, 4], [5, 6]], GREEDY)
    text = repr(out[0])
    assert text.startswith("Completion(") and "5 tokens" in text and "finish='length'" in text
    assert len(text) < 120
    record = out[0].metrics
    assert record.ttft > 0 and record.e2e >= record.ttft and len(record.itls) == 4
    m = engine.metrics(out)
    assert m["compile_seconds"] > 0                     # the first call compiled, reported apart
    assert m["output_tokens_per_s"] > 0 and m["requests"] == 2
    engine.generate([[3, 4], [5, 6]], GREEDY)
    assert engine.metrics(out)["compile_seconds"] == 0.0


def test_llm_front_door_chat_and_generate():
    llm = kvlab.LLM("smollm2-135m", cache=kvlab.PagedKVCache(num_pages=64, page_size=16))
    tok = llm.tokenizer
    params = kvlab.SamplingParams(max_tokens=4)
    out = llm.chat(["What is 2 + 2?", [{"role": "user", "content": "Hi"}]], params, system="Be brief.")
    assert [c.prompt_token_ids for c in out] == [tok.encode_chat("What is 2 + 2?", system="Be brief."),
                                                 tok.encode_chat("Hi", system="Be brief.")]
    assert llm.generate("Once upon a time", params)[0].prompt_token_ids == tok.encode("Once upon a time")
    assert isinstance(llm.engine, kvlab.Engine) and llm.engine.cache.stats().pages_used == 0


def penalized_greedy(model, prompt, max_tokens, rep, presence, frequency) -> list[int]:
    """The reference decode with vLLM's penalties applied to each step's logits (NumPy)."""
    ref, out = DenseReferenceDecoder(model), []
    for _ in range(max_tokens):
        logits = np.array(ref.next_logits(list(prompt) + out), np.float64)
        counts = np.bincount(out, minlength=len(logits))
        seen = counts > 0
        seen[list(prompt)] = True
        logits = np.where(seen, np.where(logits > 0, logits / rep, logits * rep), logits)
        out.append(int(np.argmax(logits - frequency * counts - presence * (counts > 0))))
    return out


def test_penalties_match_the_reference_through_prefix_hits_and_preemption(tiny_model):
    cache = kvlab.PagedKVCache(num_pages=14, page_size=4, prefix_caching=True)
    engine = kvlab.Engine(tiny_model, cache=cache,
                          scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=16))
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 3, 4], [3, 4, 5, 6, 7, 8, 9, 10, 11], [20, 21, 22]]
    settings = [(1.5, 0.0, 0.0), (1.0, 2.0, 0.0), (1.2, 0.0, 1.5)]
    params = [kvlab.SamplingParams(max_tokens=12, ignore_eos=True, repetition_penalty=r,
                                   presence_penalty=p, frequency_penalty=f) for r, p, f in settings]
    plain = kvlab.SamplingParams(max_tokens=12, ignore_eos=True)
    for _ in range(2):                                  # the second round hits the cached prefixes
        out = engine.generate(prompts + [[30, 31]], params + [plain])
        for prompt, setting, c in zip(prompts, settings, out):
            assert c.token_ids == penalized_greedy(tiny_model, prompt, 12, *setting)
        assert out[3].token_ids == DenseReferenceDecoder(tiny_model).greedy([30, 31], 12)
    assert engine.scheduler.num_preemptions > 0, "the cache was meant to force preemptions"
    assert engine.cache.stats().prefix_hit_tokens > 0


def test_prompt_logprobs_match_the_reference_across_chunks(tiny_model):
    cache = kvlab.PagedKVCache(num_pages=32, page_size=4, prefix_caching=True)
    engine = kvlab.Engine(tiny_model, cache=cache,
                          scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=8))
    prompt = [3, 9, 4, 7, 5, 11, 2, 8, 6, 10, 12]
    engine.generate([prompt], GREEDY)                  # cached now: the next must not reuse it
    hits = cache.stats().prefix_hit_tokens
    asking = kvlab.SamplingParams(max_tokens=2, prompt_logprobs=2, ignore_eos=True)
    out = engine.generate([prompt, [4, 5, 6]], [asking, GREEDY])
    entries = out[0].prompt_logprobs
    assert cache.stats().prefix_hit_tokens == hits and out[1].prompt_logprobs is None
    assert len(entries) == len(prompt) and entries[0] is None
    ref = DenseReferenceDecoder(tiny_model)
    for p in range(1, len(prompt)):
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(ref.next_logits(prompt[:p]))))
        assert list(entries[p])[0] == prompt[p]
        assert entries[p][prompt[p]] == pytest.approx(float(logp[prompt[p]]), abs=1e-4)
        for t in np.argsort(-logp)[:2]:
            assert entries[p][int(t)] == pytest.approx(float(logp[t]), abs=1e-4)
    assert out[0].token_ids == ref.greedy(prompt, 2)


def test_one_forward_checks_a_greedy_sequence_as_the_token_by_token_reference_does(tiny_model):
    ref = DenseReferenceDecoder(tiny_model)
    prompt = [11, 12, 13, 14]
    tokens = ref.greedy(prompt, 70)                       # past one 64-token padding bucket
    assert ref.greedy_choices(prompt, tokens) == tokens
    wrong = tokens[:5] + [(tokens[5] + 1) % tiny_model.config.vocab_size] + tokens[6:]
    choices = ref.greedy_choices(prompt, wrong)
    assert choices[:6] == tokens[:6] and choices[5] != wrong[5]
    assert choices[6] == ref.greedy(prompt + wrong[:6], 1)[0]      # each choice follows its prefix
    assert ref.greedy_choices(prompt, []) == []
