"""``kvlab.models.load``: a bundled model name or a local transformers directory -> (model, tokenizer).

HF directories need ``config.json``, ``*.safetensors`` (sharded or not) and ``tokenizer.json``.
Weights are read with ``safetensors`` into NumPy, renamed to kvlab's names, transposed to the
``x @ w`` layout and stacked over layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from kvlab.models.config import ModelConfig
from kvlab.models.llama import LlamaModel, weight_shapes
from kvlab.models.tokenizer import Tokenizer

# kvlab stacked name -> (HF per-layer name, transpose)
_HF_LAYER_NAMES = {
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True), "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True), "wo": ("self_attn.o_proj.weight", True),
    "bq": ("self_attn.q_proj.bias", False), "bk": ("self_attn.k_proj.bias", False),
    "bv": ("self_attn.v_proj.bias", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True), "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt."""


def _read_safetensors(directory: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.flax import load_file  # handles bf16, which NumPy cannot name

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {directory}")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:  # truncated header, bad offsets, ...
            raise CheckpointError(f"cannot read {f}: {e} (truncated or corrupt safetensors file)") from e
    return tensors


def hf_weights_to_kvlab(config: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename, transpose and stack transformers' Llama-family weights."""
    prefix = "model." if "model.embed_tokens.weight" in tensors else ""

    def get(name: str) -> np.ndarray:
        try:
            return tensors[name]
        except KeyError:
            raise CheckpointError(f"checkpoint has no tensor {name!r}") from None

    shapes = weight_shapes(config)
    out = {"embed": get(f"{prefix}embed_tokens.weight"), "final_norm": get(f"{prefix}norm.weight")}
    if "lm_head" in shapes:
        out["lm_head"] = get("lm_head.weight").T
    for name in shapes:
        if name not in _HF_LAYER_NAMES:
            continue
        hf_name, transpose = _HF_LAYER_NAMES[name]
        per_layer = [get(f"{prefix}layers.{i}.{hf_name}") for i in range(config.num_layers)]
        out[name] = np.stack([w.T if transpose else w for w in per_layer])
    return out


def load_hf_directory(path: Path, dtype=jnp.float32) -> tuple[LlamaModel, Tokenizer]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        hf_config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    config = ModelConfig.from_hf_dict(hf_config)
    weights = hf_weights_to_kvlab(config, _read_safetensors(path))
    tokenizer = Tokenizer.from_hf_directory(path, eos_token_ids=config.eos_token_ids)
    return LlamaModel(config, dtype=dtype, weights=weights), tokenizer


def load(name_or_path: str, dtype=jnp.float32) -> tuple[LlamaModel, Tokenizer]:
    """Load a model and its tokenizer.

    name_or_path: a bundled name (``"smollm2-135m"``), a local HF directory, or a ``.gguf`` file.
    dtype: parameter and activation dtype (e.g. ``jnp.float32``, ``jnp.bfloat16``).
    """
    from kvlab.models import bundled, gguf_file

    if name_or_path in bundled.BUNDLED_MODELS:
        return gguf_file.load_gguf(bundled.locate(name_or_path), dtype=dtype)
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return gguf_file.load_gguf(path, dtype=dtype)
    if path.is_dir():
        return load_hf_directory(path, dtype=dtype)
    raise ValueError(f"unknown model {name_or_path!r}: expected one of the bundled names "
                     f"{sorted(bundled.BUNDLED_MODELS)}, a local transformers directory "
                     f"(config.json + *.safetensors + tokenizer.json) or a .gguf file")
