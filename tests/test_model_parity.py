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
    "llama-linear-rope": lambda: transformers.LlamaConfig(
        **COMMON, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
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
    return save_hf_model(FAMILIES[family](), directory, seed)


def save_hf_model(config, directory, seed: int = 0):
    """A random transformers model of ``config`` saved (safetensors, float32, a tokenizer) to
    ``directory``; returns the model."""
    torch.manual_seed(seed)
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


def hf_logits(hf_model, tokens) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor(tokens)[None]).logits[0].numpy()


def relative_error(model, hf_model, tokens) -> float:
    want, got = hf_logits(hf_model, tokens), np.asarray(model.dense_logits(jnp.asarray(tokens)))
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_generation_config_eos_and_the_post_processors_bos(tmp_path):
    """As transformers: generate stops on generation_config.json's EOS ids too (Llama 3 Instruct's
    <|eot_id|> is only there), and a tokenizer.json whose post-processor adds BOS (Llama 3's,
    with no add_bos_token in tokenizer_config.json) gets it on every text."""
    import tokenizers

    import kvlab

    save_random_hf_model("llama2", tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="w1 $A", special_tokens=[("w1", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    model, tokenizer = kvlab.models.load(str(tmp_path))
    assert model.config.eos_token_ids == tokenizer.eos_token_ids == (2, 7)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.encode("w5 w6") == hf_tok("w5 w6")["input_ids"] == [1, 5, 6]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w1", "add_bos_token": False}))
    assert kvlab.models.load_tokenizer(str(tmp_path)).encode("w5 w6") == [5, 6]
    tok.post_processor = tokenizers.processors.TemplateProcessing(       # BOS and EOS around a text
        single="w1 $A w2", special_tokens=[("w1", 1), ("w2", 2)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w1"}))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    want = hf_tok("w5 w6")["input_ids"]
    assert kvlab.models.load_tokenizer(str(tmp_path)).encode("w5 w6") == want == [1, 5, 6, 2]


def test_a_sharded_checkpoint_reads_the_shards_its_index_names(tmp_path):
    """model.safetensors.index.json decides (a stale file beside the shards is not read over them,
    as transformers does not read it)."""
    from safetensors.numpy import save_file

    import kvlab

    hf_model = save_random_hf_model("llama2", tmp_path)
    hf_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="60KB")
    (tmp_path / "model.safetensors").unlink()
    assert len(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]) > 2
    save_file({"model.norm.weight": np.zeros(64, np.float32)}, str(tmp_path / "zz_stale.safetensors"))
    model, _ = kvlab.models.load(str(tmp_path), dtype=jnp.float32)
    assert relative_error(model, hf_model, np.arange(3, 40)) < 1e-4


def test_weights_the_config_does_not_use_are_refused(tmp_path):
    """No silent drop: Llama's attention_bias (o_proj has one too) and a checkpoint with more
    layers than config.json names are errors, not different logits."""
    import kvlab
    from kvlab.models import CheckpointError, UnsupportedModelError

    save_hf_model(transformers.LlamaConfig(**COMMON, attention_bias=True), tmp_path)
    with pytest.raises(UnsupportedModelError, match="attention_bias=true"):
        kvlab.models.load(str(tmp_path))
    save_random_hf_model("llama2", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(CheckpointError, match="tensors this config does not use.*layers.2"):
        kvlab.models.load(str(tmp_path))


def write_gguf(hf_model, path, extra) -> None:
    """``hf_model`` as llama.cpp's converter writes a Llama (Q/K rows permuted, float32), with
    ``extra(writer, config)`` adding the RoPE scaling."""
    import gguf

    c, sd = hf_model.config, {k: v.float().numpy() for k, v in hf_model.state_dict().items()}

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers), w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size), w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads), w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"]), w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default"), w.add_token_merges([])
    w.add_token_list([f"w{i}" for i in range(c.vocab_size)]), w.add_token_types([1] * c.vocab_size)
    w.add_bos_token_id(1), w.add_eos_token_id(2)
    extra(w, c)
    for name, hf_name in (("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"),
                          ("output", "lm_head")):
        w.add_tensor(f"{name}.weight", sd[f"{hf_name}.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for name, heads in (("q", c.num_attention_heads), ("k", c.num_key_value_heads)):
            weight = sd[f"{p}self_attn.{name}_proj.weight"]
            w.add_tensor(f"blk.{i}.attn_{name}.weight", permute(weight, heads))
        for name, hf_name in (("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
                              ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                              ("ffn_down", "mlp.down_proj"), ("attn_norm", "input_layernorm"),
                              ("ffn_norm", "post_attention_layernorm")):
            w.add_tensor(f"blk.{i}.{name}.weight", sd[f"{p}{hf_name}.weight"])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


def llama3_frequency_factors(writer, config) -> None:
    """The rope_freqs.weight tensor llama.cpp's converter writes for Llama 3.1+ scaling."""
    rope = config.rope_parameters
    dim, old = config.hidden_size // config.num_attention_heads, rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    factors = []
    for freq in 1.0 / rope["rope_theta"] ** (np.arange(0, dim, 2) / dim):
        wavelen = 2 * np.pi / freq
        smooth = (old / wavelen - low) / (high - low)
        factors.append(1.0 if wavelen < old / high else factor if wavelen > old / low
                       else 1 / ((1 - smooth) / factor + smooth))
    writer.add_tensor("rope_freqs.weight", np.array(factors, np.float32))


def linear_scaling(writer, config) -> None:
    import gguf

    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(config.rope_parameters["factor"])


@pytest.mark.parametrize("family, extra", [("llama3-rope-scaling", llama3_frequency_factors),
                                           ("llama-linear-rope", linear_scaling)])
def test_gguf_rope_scaling_matches_transformers(family, extra, tmp_path):
    """A GGUF file's RoPE scaling (llama.cpp's per-frequency factors, linear) is applied: logits
    equal transformers' on the same weights past the original context."""
    import kvlab

    hf_model = save_random_hf_model(family, tmp_path)
    write_gguf(hf_model, tmp_path / "model.gguf", extra)
    model, _ = kvlab.models.load(str(tmp_path / "model.gguf"))
    assert model.config.rope_scaling is not None
    assert relative_error(model, hf_model, np.random.default_rng(0).integers(3, 256, 120)) < 1e-4
