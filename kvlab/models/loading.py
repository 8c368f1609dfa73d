"""``kvlab.models.load``: a bundled model name or a local transformers directory -> (model, tokenizer).

HF directories need ``config.json`` and ``*.safetensors`` (sharded or not); ``tokenizer.json`` is
optional (without it the tokenizer is None: token ids in, token ids out). Weights are read with
``safetensors`` into NumPy, renamed to kvlab's names, transposed to the ``x @ w`` layout and
stacked over layers. ``load_tokenizer`` reads the tokenizer alone, without the weights.
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


def _read_hf_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e


def load_hf_directory(path: Path, dtype=jnp.float32) -> tuple[LlamaModel, Tokenizer | None]:
    """A transformers checkpoint directory -> (model, tokenizer, or None without tokenizer.json)."""
    config = ModelConfig.from_hf_dict(_read_hf_config(path))
    weights = hf_weights_to_kvlab(config, _read_safetensors(path))
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_hf_directory(path, eos_token_ids=config.eos_token_ids)
    return LlamaModel(config, dtype=dtype, weights=weights), tokenizer


def _resolve(name_or_path: str) -> tuple[str, Path]:
    """("bundled" | "gguf" | "hf", path) for a bundled name or an existing path; else a clear error."""
    from kvlab.models import bundled

    if name_or_path in bundled.BUNDLED_MODELS:
        return "bundled", bundled.locate(name_or_path)
    path = Path(name_or_path).expanduser()
    names = sorted(bundled.BUNDLED_MODELS)
    expected = (f"expected one of the bundled names {names}, a local transformers directory "
                f"(config.json + *.safetensors, optionally tokenizer.json) or a .gguf file")
    if not path.exists():
        looks_like_path = ("/" in name_or_path or "\\" in name_or_path or path.is_absolute()
                           or name_or_path.startswith(("~", ".")) or path.suffix == ".gguf")
        if looks_like_path:
            raise FileNotFoundError(f"model path {name_or_path!r} does not exist (no file or directory "
                                    f"at {path.absolute()}); {expected}")
        raise ValueError(f"unknown model {name_or_path!r}: no bundled model has that name and no file "
                         f"or directory of that name exists here; {expected}")
    if path.is_dir():
        return "hf", path
    if path.suffix == ".gguf":
        return "gguf", path
    raise ValueError(f"{name_or_path!r} is a file but not a .gguf file; {expected}")


def load(name_or_path: str, dtype=jnp.float32) -> tuple[LlamaModel, Tokenizer | None]:
    """Load a model and its tokenizer.

    name_or_path: a bundled name (``"smollm2-135m"``), a local HF directory, or a ``.gguf`` file.
    dtype: parameter and activation dtype (e.g. ``jnp.float32``, ``jnp.bfloat16``).

    An HF directory without ``tokenizer.json`` loads with tokenizer None (vLLM's
    ``skip_tokenizer_init``): the engine then takes prompts as token ids and returns token ids
    only (no text, no stop strings). A path that does not exist raises ``FileNotFoundError``; a
    bare name that is neither bundled nor an existing path raises ``ValueError`` ("unknown
    model"); both list the bundled names.
    """
    from kvlab.models import gguf_file

    kind, path = _resolve(name_or_path)
    if kind == "hf":
        return load_hf_directory(path, dtype=dtype)
    return gguf_file.load_gguf(path, dtype=dtype)


def load_tokenizer(name_or_path: str) -> Tokenizer | None:
    """The tokenizer of a model (same names and paths as ``load``) without reading its weights;
    None for an HF directory without ``tokenizer.json``."""
    from kvlab.models import gguf_file

    kind, path = _resolve(name_or_path)
    if kind == "hf":
        if not (path / "tokenizer.json").is_file():
            return None
        config = ModelConfig.from_hf_dict(_read_hf_config(path))
        return Tokenizer.from_hf_directory(path, eos_token_ids=config.eos_token_ids)
    return Tokenizer.from_gguf_metadata(gguf_file.read_gguf(path)[1])
