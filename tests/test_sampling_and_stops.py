"""On-device sampling and stop conditions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kvlab
from kvlab.engine import Sampler
from kvlab.engine.sampling import SamplingArrays
from kvlab.schedulers import Request
from kvlab.schedulers.stopping import OutputText


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


class Chars:
    """A detokenizer for the stop rules: token t is the character chr(t)."""

    def __init__(self):
        self.text = ""

    def push(self, ids):
        new = "".join(map(chr, ids))
        self.text += new
        return new

    def flush(self):
        return ""


def read_chars(text: str, **params) -> Request:
    """A request with a character detokenizer fed ``text`` one character a token until it ends."""
    params = kvlab.SamplingParams(**{"max_tokens": 64, **params})
    req = Request("r", [1], params, eos_token_ids=(3,))
    req.output_text = OutputText(Chars(), params.stop, keep_stop=params.include_stop_str_in_output)
    for ch in text:
        req.append_token(ord(ch), 0.0)
        if req.finish_reason is not None:
            break
    return req


def test_a_stop_string_ends_only_after_min_tokens():
    """vLLM's rule (its tests/detokenizer/test_min_tokens.py): a stop string counts only if it
    ends in the text of a token after the first ``min_tokens``; earlier text stays as it is."""
    assert read_chars("heyhey!", stop="e").text == "h"
    late = read_chars("heyhey!", stop="e", min_tokens=3)
    assert (late.text, late.finish_reason, late.stop_reason) == ("heyh", "stop", "e")
    assert len(late.output_token_ids) == 5
    # One that began before and ends after counts: "ab" ends in token 3.
    assert read_chars("xabz", stop="ab", min_tokens=2).text == "x"
    # One that ends inside the first min_tokens never does, however many tokens follow.
    never = read_chars("xabzzz", stop="ab", min_tokens=3, max_tokens=6)
    assert (never.text, never.finish_reason) == ("xabzzz", "length")


def test_stop_token_text_and_include_stop_str_in_output():
    """The id that ends a request stays in the token ids; its text (and a stop string) leaves the
    output text unless ``include_stop_str_in_output`` (vLLM)."""
    by_id = read_chars("abc!de", stop_token_ids=[ord("!")])
    assert by_id.text == "abc" and by_id.output_token_ids[-1] == ord("!") and by_id.stop_reason == ord("!")
    kept = read_chars("abc!de", stop_token_ids=[ord("!")], include_stop_str_in_output=True)
    assert kept.text == "abc!" and kept.output_token_ids == by_id.output_token_ids
    assert read_chars("abENDcd", stop="END").text == "ab"
    assert read_chars("abENDcd", stop="END", include_stop_str_in_output=True).text == "abEND"
    # EOS listed among the stop ids as well: EOS first, so no stop_reason (vLLM's order).
    eos = read_chars("ab\x03c", stop_token_ids=[3])
    assert (eos.finish_reason, eos.stop_reason, eos.text) == ("stop", None, "ab")


def test_vllm_spellings_of_off_and_none():
    assert kvlab.SamplingParams(top_k=-1).top_k == 0
    params = kvlab.SamplingParams(stop=None, stop_token_ids=None)
    assert params.stop == () and params.stop_token_ids == ()
    assert kvlab.SamplingParams(stop="x", stop_token_ids=5).stop_token_ids == (5,)
    with pytest.raises(ValueError, match="top_k must be an integer >= -1 \\(0 or -1 = off\\)"):
        kvlab.SamplingParams(top_k=-2)
    with pytest.raises(ValueError, match="stop_token_ids must be None or a list of token ids"):
        kvlab.SamplingParams(stop_token_ids=1.5)
    with pytest.raises(ValueError, match="include_stop_str_in_output must be True or False"):
        kvlab.SamplingParams(include_stop_str_in_output="yes")
