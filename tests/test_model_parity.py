"""kvlab's logits against transformers' (torch CPU, float32) for random tiny models of each family,
saved with ``save_pretrained`` and loaded back through ``kvlab.models.load``."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)

FAMILIES = {
    "llama3-rope-scaling": lambda: transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32}),
    "llama2": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=False),
    "smollm2-tied": lambda: transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e5}),
    "qwen2-bias-tied": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True),
    "mistral-window": lambda: transformers.MistralConfig(**COMMON, sliding_window=8, head_dim=16),
}
MODEL_CLASSES = {"LlamaConfig": "LlamaForCausalLM", "Qwen2Config": "Qwen2ForCausalLM",
                 "MistralConfig": "MistralForCausalLM"}


def write_tokenizer(directory):
    """A word-level tokenizer.json so the directory is a complete checkpoint."""
    import tokenizers

    vocab = {f"w{i}": i for i in range(256)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w1", "eos_token": "w2"}))


def save_random_hf_model(family: str, directory, seed: int = 0):
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    config._attn_implementation = "eager"
    model = getattr(transformers, MODEL_CLASSES[type(config).__name__])(config).float().eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mistake in any of them shows
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    import kvlab

    hf_model = save_random_hf_model(family, tmp_path)
    model, tokenizer = kvlab.models.load(str(tmp_path), dtype=jnp.float32)
    tokens = np.random.default_rng(1).integers(0, 256, size=40)
    with torch.no_grad():
        want = hf_model(torch.tensor(tokens)[None]).logits[0].numpy()
    for loop in (kvlab.models.ScanLayers(), kvlab.models.UnrolledLayers(),
                 kvlab.models.StreamedLayers(num_resident=1)):
        got = np.asarray(model.with_layer_loop(loop).dense_logits(jnp.asarray(tokens)))
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert rel < 1e-4, f"{family}, {loop}: relative error {rel:.2e}"
    assert tokenizer.encode("w5 w7") == [5, 7]


def test_layer_loops_serve_the_same_tokens():
    """The engine's serving forward (paged cache, writes into the cache per layer) gives the same
    greedy tokens whether the layers are scanned or unrolled."""
    import kvlab
    from kvlab.models import LlamaModel, ModelConfig, ScanLayers, UnrolledLayers

    prompts = [list(range(3, 3 + n)) for n in (5, 17, 30)]
    outs = []
    for loop in (ScanLayers(), UnrolledLayers()):
        model = LlamaModel(ModelConfig.tiny(num_layers=3), seed=4, layer_loop=loop)
        engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=32, page_size=8), max_model_len=128)
        outs.append([c.token_ids for c in engine.generate(prompts, kvlab.SamplingParams(max_tokens=12,
                                                                                         ignore_eos=True))])
        assert engine.cache.stats().pages_used == 0
    assert outs[0] == outs[1]
    assert len(set(map(tuple, outs[0]))) > 1          # the prompts lead to different completions


def test_unrolled_layers_keep_one_array_per_layer_and_give_the_weights_back():
    from kvlab.models import LlamaModel, ModelConfig, ScanLayers, UnrolledLayers

    scanned = LlamaModel(ModelConfig.tiny(num_layers=3, attention_bias=True), seed=2, layer_loop=ScanLayers())
    unrolled = scanned.with_layer_loop(UnrolledLayers())
    assert "w_qkv_layer2" in unrolled.placed_names and "w_qkv" not in unrolled.placed_names
    assert unrolled.b_qkv_layer0[...].shape == scanned.b_qkv[...].shape[1:] == (64 + 32 + 32,)
    want, got = scanned.host_weights(), unrolled.host_weights()
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_config_families_are_read(tmp_path):
    import kvlab

    save_random_hf_model("mistral-window", tmp_path)
    model, _ = kvlab.models.load(str(tmp_path))
    assert model.config.sliding_window == 8 and model.config.architecture == "MistralForCausalLM"
    save_random_hf_model("qwen2-bias-tied", tmp_path)
    model, _ = kvlab.models.load(str(tmp_path))
    assert model.config.attention_bias and model.config.tie_word_embeddings


def test_checkpoint_without_tokenizer_loads_token_ids_only(tmp_path):
    """No tokenizer.json (vLLM's skip_tokenizer_init): the model loads with tokenizer None and the
    engine maps token ids to token ids, with no text."""
    import kvlab

    hf_model = save_random_hf_model("llama2", tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer_config.json").unlink()
    model, tokenizer = kvlab.models.load(str(tmp_path))
    assert tokenizer is None and kvlab.models.load_tokenizer(str(tmp_path)) is None
    tokens = np.arange(3, 23)
    with torch.no_grad():
        want = hf_model(torch.tensor(tokens)[None]).logits[0].numpy()
    got = np.asarray(model.dense_logits(jnp.asarray(tokens)))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=16, page_size=8))
    done = engine.generate([[5, 6, 7]], kvlab.SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert len(done.token_ids) == 4 and all(0 <= t < 256 for t in done.token_ids)
    assert done.text is None


def test_tokenizer_loads_alone_from_a_directory(tmp_path):
    import kvlab

    save_random_hf_model("llama2", tmp_path)
    tokenizer = kvlab.models.load_tokenizer(str(tmp_path))
    assert tokenizer.encode("w5 w7") == [5, 7] and tokenizer.eos_token_ids == (2,)


@pytest.mark.parametrize("relative", ["missing-dir/", "missing.gguf", "./missing", "sub/dir"])
def test_a_path_that_does_not_exist_is_reported_as_such(tmp_path, monkeypatch, relative):
    import kvlab

    monkeypatch.chdir(tmp_path)
    for loader in (kvlab.models.load, kvlab.models.load_tokenizer):
        with pytest.raises(FileNotFoundError, match="does not exist") as error:
            loader(relative)
        message = str(error.value)
        assert "unknown model" not in message and "smollm2-135m" in message
        assert str(tmp_path) in message                             # where it looked
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}/absent' does not exist"):
        kvlab.models.load(str(tmp_path / "absent"))


def test_an_unknown_name_and_a_file_that_is_no_model(tmp_path, monkeypatch):
    import kvlab

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"unknown model 'smollm3'.*\['smollm2-135m'\]"):
        kvlab.models.load("smollm3")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="is a file but not a .gguf file"):
        kvlab.models.load("weights.bin")
