"""GGUF checkpoints (llama.cpp's format): metadata -> ModelConfig, quantized tensors -> arrays.

Dequantization uses the ``gguf`` package's NumPy implementation of every block format (Q4_1,
Q8_0, ...). llama.cpp's converter permutes the rows of the Q and K projections of ``llama``
models (interleaved RoPE pairs); ``_unpermute`` restores transformers' rotate-half layout. A
``ConvertedCache`` keeps what a file converts to, so the next read skips the parse and the
dequantization (``kvlab.models.converted_cache``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kvlab.models.config import (
    CheckpointError,
    FrequencyFactors,
    LinearRopeScaling,
    ModelConfig,
    UnsupportedModelError,
)
from kvlab.models.converted_cache import ConvertedCache
from kvlab.models.llama import weight_shapes
from kvlab.models.tokenizer import Tokenizer

_ARCHS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# kvlab stacked name -> llama.cpp per-layer tensor name (after "blk.N.")
_LAYER_NAMES = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight",
                "wv": "attn_v.weight", "wo": "attn_output.weight", "mlp_norm": "ffn_norm.weight",
                "w_gate": "ffn_gate.weight", "w_up": "ffn_up.weight", "w_down": "ffn_down.weight",
                "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias"}


def read_gguf(path: Path):
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # bad magic, truncated tensor data, bad offsets
        raise CheckpointError(f"cannot read GGUF file {path}: {e} (truncated or corrupt?)") from e
    meta = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field we do not need may use an odd type
            continue
    return reader, meta


def config_from_gguf(meta: dict) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in _ARCHS:
        raise UnsupportedModelError(f"unsupported GGUF architecture {arch!r}; supported: {sorted(_ARCHS)}")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    scaling = _rope_scaling(meta, get)
    hidden = get("embedding_length")
    head_dim = get("attention.key_length") or hidden // heads
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=get("vocab_size") or len(meta["tokenizer.ggml.tokens"]), hidden_size=hidden,
        intermediate_size=get("feed_forward_length"), num_layers=get("block_count"),
        num_heads=heads, num_kv_heads=get("attention.head_count_kv") or heads, head_dim=head_dim,
        rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=scaling,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=get("context_length", 2048),
        tie_word_embeddings=False,  # decided by the tensors present, below
        attention_bias=arch == "qwen2", sliding_window=get("attention.sliding_window"),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=(eos,) if eos is not None else (), architecture=_ARCHS[arch])


ROPE_FREQS = "kvlab.rope_freqs"      # the rope_freqs.weight tensor's values, kept with the metadata


def _rope_scaling(meta: dict, get):
    """The RoPE scaling a GGUF file records: llama.cpp's per-frequency factors (the
    ``rope_freqs.weight`` tensor, Llama 3.1+), linear ``rope.scaling``, or none; other kinds
    raise UnsupportedModelError."""
    if ROPE_FREQS in meta:
        return FrequencyFactors(factors=tuple(float(f) for f in meta[ROPE_FREQS]))
    kind = get("rope.scaling.type", "none")
    factor = float(get("rope.scaling.factor", 1.0) or 1.0)
    if kind == "none" or factor == 1.0:
        return None
    if kind == "linear":
        return LinearRopeScaling(factor=factor)
    raise UnsupportedModelError(f"GGUF rope.scaling.type {kind!r} is not supported; kvlab supports none, "
                                f"linear and per-frequency factors (rope_freqs.weight)")


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation. w: [n_heads * head_dim, in]."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def read_gguf_weights(path: Path, cache: ConvertedCache | None = None
                      ) -> tuple[ModelConfig, dict[str, np.ndarray], Tokenizer]:
    """Read a GGUF file: its config, every tensor dequantized to float32 host arrays (named as
    ``weight_shapes``), and its tokenizer; through ``cache`` when given (read from it if it holds
    the file's conversion, else converted and kept there)."""
    stored = cache.read(path) if cache is not None else None
    if stored is not None:
        meta, weights = stored
        config = _with_tied_head(config_from_gguf(meta), weights)
        shapes = weight_shapes(config)
        if sorted(weights) == sorted(shapes) and all(weights[n].shape == s for n, s in shapes.items()):
            return _with_tokenizer(config, meta, weights)
    reader, meta = read_gguf(path)
    config, weights = _convert(reader, meta, path)
    if cache is not None:
        cache.write(path, meta, weights)
    return _with_tokenizer(config, meta, weights)


def _with_tied_head(config: ModelConfig, weights) -> ModelConfig:
    return dataclasses.replace(config, tie_word_embeddings="lm_head" not in weights)


def _with_tokenizer(config: ModelConfig, meta: dict, weights):
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    return dataclasses.replace(config, eos_token_ids=tokenizer.eos_token_ids), weights, tokenizer


def _convert(reader, meta: dict, path: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, weights by kvlab name) of a parsed GGUF file."""
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        try:
            tensors[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32)
        except Exception as e:
            raise CheckpointError(f"cannot dequantize {t.name} ({t.tensor_type.name}) in {path}: {e}") from e
    if "rope_freqs.weight" in tensors:        # kept with the metadata: a cached conversion has it too
        meta[ROPE_FREQS] = tensors["rope_freqs.weight"].tolist()
    config = config_from_gguf(meta)
    tied = "output.weight" not in tensors
    config = dataclasses.replace(config, tie_word_embeddings=tied)
    permute = config.architecture != "Qwen2ForCausalLM"  # llama.cpp permutes llama-style Q/K only

    def get(name):
        try:
            return tensors[name]
        except KeyError:
            raise CheckpointError(f"GGUF file {path} has no tensor {name!r}") from None

    weights = {"embed": get("token_embd.weight"), "final_norm": get("output_norm.weight")}
    if not tied:
        weights["lm_head"] = get("output.weight").T
    for name in weight_shapes(config):
        if name in _LAYER_NAMES:
            stack = []
            for i in range(config.num_layers):
                w = get(f"blk.{i}.{_LAYER_NAMES[name]}")
                if permute and name in ("wq", "wk"):
                    w = _unpermute(w, config.num_heads if name == "wq" else config.num_kv_heads)
                stack.append(w.T if w.ndim == 2 else w)
            weights[name] = np.stack(stack)
    return config, weights
