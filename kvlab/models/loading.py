"""``kvlab.models.load``: a bundled model name, a local transformers directory or a GGUF file ->
(model, tokenizer).

HF directories need ``config.json`` and ``*.safetensors`` (sharded or not); ``tokenizer.json`` is
optional (without it the tokenizer is None: token ids in, token ids out). Weights are read with
``safetensors`` into NumPy, renamed to kvlab's names, transposed to the ``x @ w`` layout and
stacked over layers. ``load_tokenizer`` reads the tokenizer alone, without the weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from kvlab.models.config import CheckpointError, ModelConfig
from kvlab.models.converted_cache import ConvertedCache
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


GGUF_MAGIC = b"GGUF"            # the first four bytes of every GGUF file
_HF_FILES = "config.json + *.safetensors, optionally tokenizer.json"


def _safetensors_files(directory: Path) -> list[Path]:
    """The files that hold the weights, as transformers picks them: ``model.safetensors``, else
    the shards ``model.safetensors.index.json`` lists (other files beside them, such as a stale
    shard or Mistral's ``consolidated.safetensors``, are not read), else every ``*.safetensors``."""
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index (a weight_map): {e}") from e
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are not in {directory}: {missing[:3]}")
        return [directory / name for name in shards]
    return sorted(directory.glob("*.safetensors"))


def _read_safetensors(directory: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file  # host arrays; bf16 as ml_dtypes' bfloat16

    files = _safetensors_files(directory)
    if not files:
        raise CheckpointError(f"no *.safetensors files in {directory} (a transformers checkpoint "
                              f"directory holds {_HF_FILES})")
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
    used = {f"{prefix}embed_tokens.weight", f"{prefix}norm.weight", "lm_head.weight"}
    out = {"embed": get(f"{prefix}embed_tokens.weight"), "final_norm": get(f"{prefix}norm.weight")}
    if "lm_head" in shapes:
        out["lm_head"] = get("lm_head.weight").T
    for name in shapes:
        if name not in _HF_LAYER_NAMES:
            continue
        hf_name, transpose = _HF_LAYER_NAMES[name]
        names = [f"{prefix}layers.{i}.{hf_name}" for i in range(config.num_layers)]
        used.update(names)
        out[name] = np.stack([get(n).T if transpose else get(n) for n in names])
    unused = sorted(n for n in tensors if n not in used and not n.endswith("rotary_emb.inv_freq"))
    if unused:
        raise CheckpointError(f"the checkpoint has {len(unused)} tensors this config does not use, e.g. "
                              f"{unused[:4]}: config.json does not match the weights, or the model uses a "
                              f"feature kvlab does not support")
    return out


def _read_hf_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e


class Checkpoint(NamedTuple):
    """A checkpoint read into host memory: its config, its weights named as ``weight_shapes``
    (NumPy arrays in the checkpoint's dtype), and its tokenizer (None for a transformers directory
    without ``tokenizer.json``)."""

    config: ModelConfig
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer | None


def _generation_eos(path: Path) -> tuple[int, ...]:
    """EOS ids of ``generation_config.json`` (transformers' ``generate`` stops on them too:
    Llama 3 Instruct's ``<|eot_id|>`` is there), () without one."""
    file = path / "generation_config.json"
    if not file.is_file():
        return ()
    try:
        eos = json.loads(file.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    return tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())


def read_hf_directory(path: Path) -> Checkpoint:
    """A transformers checkpoint directory, read into host memory; the stop tokens are
    config.json's and generation_config.json's EOS ids."""
    config = ModelConfig.from_hf_dict(_read_hf_config(path))
    eos = tuple(dict.fromkeys(config.eos_token_ids + _generation_eos(path)))
    config = dataclasses.replace(config, eos_token_ids=eos)
    weights = hf_weights_to_kvlab(config, _read_safetensors(path))
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_hf_directory(path, eos_token_ids=config.eos_token_ids)
    return Checkpoint(config, weights, tokenizer)


def _expected() -> str:
    """What ``load`` accepts, for error messages: the bundled names and the two path kinds."""
    from kvlab.models import bundled

    return (f"expected one of the bundled names {sorted(bundled.BUNDLED_MODELS)}, a local transformers "
            f"directory ({_HF_FILES}) or a GGUF file (llama.cpp's format, usually *.gguf)")


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def _missing(name_or_path: str, path: Path) -> Exception:
    """The error for a name that is neither bundled nor an existing path: FileNotFoundError when it
    looks like a path, ValueError ("unknown model") for a bare name; both say the path does not
    exist, where it looked, and what is accepted."""
    where = f"no file or directory at {path.absolute()}"
    looks_like_path = ("/" in name_or_path or "\\" in name_or_path or path.is_absolute()
                       or name_or_path.startswith(("~", ".")) or path.suffix == ".gguf")
    if looks_like_path:
        return FileNotFoundError(f"model path {name_or_path!r} does not exist ({where}); {_expected()}")
    return ValueError(f"unknown model {name_or_path!r}: no bundled model has that name and the path "
                      f"{name_or_path!r} does not exist ({where}); {_expected()}")


def _not_a_checkpoint(name_or_path: str, path: Path) -> Exception:
    """The error for an existing path that is neither a GGUF file nor a transformers directory."""
    if path.is_dir():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; it holds {ggufs}: pass one of those files" if ggufs else ""
        return CheckpointError(f"{name_or_path!r} is a directory but not a transformers checkpoint: it has "
                               f"no config.json{hint}; {_expected()}")
    hint = ""
    if path.suffix in (".safetensors", ".json"):
        hint = f" (for a transformers checkpoint pass its directory, {str(path.parent)!r})"
    elif path.suffix == ".gguf":
        return CheckpointError(f"{name_or_path!r} ends in .gguf but does not start with the GGUF magic "
                               f"bytes {GGUF_MAGIC!r}: not a GGUF file, or a corrupt one")
    return ValueError(f"{name_or_path!r} is a file but not a .gguf file (it does not start with the GGUF "
                      f"magic bytes {GGUF_MAGIC!r}){hint}; {_expected()}")


def _resolve(name_or_path: str) -> tuple[str, Path]:
    """("bundled" | "gguf" | "hf", path) for a bundled name or an existing path; else a clear error."""
    from kvlab.models import bundled

    if name_or_path in bundled.BUNDLED_MODELS:
        return "bundled", bundled.locate(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise _missing(name_or_path, path)
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", path
    if path.is_file() and _is_gguf(path):
        return "gguf", path
    raise _not_a_checkpoint(name_or_path, path)


def load(name_or_path: str, dtype=jnp.float32) -> tuple[LlamaModel, Tokenizer | None]:
    """Load a model and its tokenizer.

    name_or_path: a bundled name (``"smollm2-135m"``), a local HF directory, or a ``.gguf`` file.
    dtype: parameter and activation dtype (e.g. ``jnp.float32``, ``jnp.bfloat16``).

    An HF directory without ``tokenizer.json`` loads with tokenizer None (vLLM's
    ``skip_tokenizer_init``): the engine then takes prompts as token ids and returns token ids
    only (no text, no stop strings). A GGUF file is recognised by its magic bytes, whatever its
    name. A path that does not exist raises ``FileNotFoundError``; a bare name that is neither
    bundled nor an existing path raises ``ValueError`` ("unknown model"); an existing path that is
    neither a GGUF file nor a directory with ``config.json`` raises ``ValueError`` (a
    ``CheckpointError`` for a directory or a ``*.gguf`` file); each says what was expected and
    lists the bundled names.
    """
    config, weights, tokenizer = read_checkpoint(name_or_path)
    return LlamaModel(config, dtype=dtype, weights=weights), tokenizer


def read_checkpoint(name_or_path: str) -> Checkpoint:
    """A checkpoint (same names and paths as ``load``, same errors) read into host memory without
    placing it on a device: what a caller that places the weights itself starts from
    (``TensorParallel.load`` shards each weight over a mesh as it goes)."""
    from kvlab.models import gguf_file

    kind, path = _resolve(name_or_path)
    if kind == "hf":
        return read_hf_directory(path)
    return Checkpoint(*gguf_file.read_gguf_weights(path, ConvertedCache.default()))


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
    stored = cache.read(path) if (cache := ConvertedCache.default()) is not None else None
    return Tokenizer.from_gguf_metadata(stored[0] if stored is not None else gguf_file.read_gguf(path)[1])
