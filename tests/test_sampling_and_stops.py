"""On-device sampling and stop conditions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import kvlab
from kvlab.engine import Sampler
from kvlab.engine.sampling import SamplingArrays


def run_sampler(logits, temperature, top_k, top_p, seed):
    """Row i draws from seed ``seed``, token index i: independent draws of one distribution."""
    n = logits.shape[0]
    params = [kvlab.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)] * n
    arrays = SamplingArrays.pack(n, list(range(n)), params, seeds=[seed] * n, counters=list(range(n)))
    return np.asarray(jax.jit(Sampler())(jnp.asarray(logits, jnp.float32), arrays).tokens)


def test_greedy_and_degenerate_filters_pick_the_argmax():
    logits = np.random.default_rng(0).standard_normal((8, 50))
    best = logits.argmax(-1)
    assert (run_sampler(logits, 0.0, 0, 1.0, 0) == best).all()
    assert (run_sampler(logits, 1.0, 1, 1.0, 0) == best).all()        # top-k 1
    assert (run_sampler(logits, 1.0, 0, 1e-6, 0) == best).all()       # tiny top-p


def test_temperature_sampling_follows_the_softmax():
    logits = np.log(np.array([[0.5, 0.3, 0.2, 1e-9]]))
    draws = np.concatenate([run_sampler(np.repeat(logits, 512, 0), 1.0, 0, 1.0, s) for s in range(4)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq[:3], [0.5, 0.3, 0.2], atol=0.03)
    assert freq[3] == 0


def test_top_k_and_top_p_restrict_the_support():
    logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    k2 = run_sampler(np.repeat(logits, 1024, 0), 1.0, 2, 1.0, 1)
    assert set(np.unique(k2)) == {0, 1}
    p = run_sampler(np.repeat(logits, 1024, 0), 1.0, 0, 0.65, 2)  # 0.4 + 0.3 covers 0.65
    assert set(np.unique(p)) == {0, 1}


def test_stop_string_ends_generation(smollm2):
    model, tok = smollm2
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=16, page_size=8), tokenizer=tok)
    ids = tok.encode_chat("What is the capital of France?")
    full = engine.generate([ids], kvlab.SamplingParams(max_tokens=12))[0]
    assert "Paris" in full.text
    cut = engine.generate([ids], kvlab.SamplingParams(max_tokens=12, stop=("Paris",)))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index("Paris")]
    assert engine.cache.stats().pages_used == 0


def test_eos_and_max_tokens(smollm2):
    model, tok = smollm2
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=16, page_size=8), tokenizer=tok)
    ids = tok.encode_chat("What is the capital of France?")
    done = engine.generate([ids], kvlab.SamplingParams(max_tokens=40))[0]
    assert done.finish_reason == "stop" and done.token_ids[-1] in tok.eos_token_ids
    short = engine.generate([ids], kvlab.SamplingParams(max_tokens=3))[0]
    assert short.finish_reason == "length" and len(short.token_ids) == 3
