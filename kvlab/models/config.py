"""Model configuration: one frozen dataclass for the Llama family, with presets.

Covers Llama 2/3 (with Llama 3 RoPE scaling), SmolLM2, Qwen2/2.5 (qkv bias, tied embeddings)
and Mistral (sliding window). ``ModelConfig.from_hf_dict`` reads a transformers ``config.json``.

Examples:
    >>> from kvlab.models import ModelConfig
    >>> cfg = ModelConfig.tiny()
    >>> cfg.num_heads // cfg.num_kv_heads
    2
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


class UnsupportedModelError(ValueError):
    """A checkpoint or config describes a model kvlab cannot run."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3RopeScaling:
    """Llama 3.1+ frequency-dependent RoPE scaling (``rope_type: "llama3"`` in config.json)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def scale(self, inv_freq: np.ndarray) -> np.ndarray:
        low_wavelen = self.original_max_position_embeddings / self.low_freq_factor
        high_wavelen = self.original_max_position_embeddings / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearRopeScaling:
    """Position interpolation (``rope_type: "linear"``): every frequency divided by ``factor``."""

    factor: float

    def scale(self, inv_freq: np.ndarray) -> np.ndarray:
        return inv_freq / self.factor


# transformers' defaults where config.json leaves max_position_embeddings out.
_DEFAULT_CONTEXT = {"LlamaForCausalLM": 2048, "MistralForCausalLM": 131072, "Qwen2ForCausalLM": 32768}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FrequencyFactors:
    """Each frequency divided by its own factor: how llama.cpp stores a scaling (Llama 3.1's) in a
    GGUF file, as the ``rope_freqs.weight`` tensor ``[head_dim // 2]``."""

    factors: tuple[float, ...]

    def scale(self, inv_freq: np.ndarray) -> np.ndarray:
        if len(self.factors) != len(inv_freq):
            raise ValueError(f"{len(self.factors)} RoPE frequency factors for {len(inv_freq)} frequencies")
        return inv_freq / np.asarray(self.factors, np.float64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shapes and options of a Llama-family decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Llama3RopeScaling | LinearRopeScaling | FrequencyFactors | None = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    architecture: str = "LlamaForCausalLM"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads}) for grouped-query attention")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be None or >= 1, got {self.sliding_window}")

    # ---- derived -----------------------------------------------------------------------------
    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse RoPE frequencies ``[head_dim // 2]`` in float64, scaling applied."""
        inv = 1.0 / (self.rope_theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim))
        return inv if self.rope_scaling is None else self.rope_scaling.scale(inv)

    def num_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        emb = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attn + mlp + 2 * self.hidden_size) + emb + self.hidden_size

    def kv_bytes_per_token(self, itemsize: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    # ---- presets -----------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """A 2-layer random-weight model for tests (GQA 2:1)."""
        base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=16, max_position_embeddings=512, eos_token_ids=(2,))
        return cls(**{**base, **overrides})

    @classmethod
    def smollm2_135m(cls) -> ModelConfig:
        return cls(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                   num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
                   max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1,
                   eos_token_ids=(2,))

    @classmethod
    def llama_3_2_1b(cls) -> ModelConfig:
        return cls(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                   num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0,
                   rope_scaling=Llama3RopeScaling(factor=32.0), rms_norm_eps=1e-5,
                   max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
                   eos_token_ids=(128001, 128008, 128009))

    @classmethod
    def llama_3_8b(cls) -> ModelConfig:
        return cls(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                   num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                   max_position_embeddings=8192, bos_token_id=128000, eos_token_ids=(128001, 128009))

    @classmethod
    def llama_3_70b(cls) -> ModelConfig:
        return cls(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_layers=80,
                   num_heads=64, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                   max_position_embeddings=8192, bos_token_id=128000, eos_token_ids=(128001, 128009))

    @classmethod
    def qwen2_5_0_5b(cls) -> ModelConfig:
        return cls(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                   num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0, rms_norm_eps=1e-6,
                   max_position_embeddings=32768, tie_word_embeddings=True, attention_bias=True,
                   bos_token_id=None, eos_token_ids=(151645, 151643), architecture="Qwen2ForCausalLM")

    @classmethod
    def mistral_7b(cls) -> ModelConfig:
        return cls(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32,
                   num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=10000.0,
                   max_position_embeddings=32768, sliding_window=4096, bos_token_id=1,
                   eos_token_ids=(2,), architecture="MistralForCausalLM")

    # ---- transformers config.json --------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        """Build from a transformers ``config.json`` dict; raises UnsupportedModelError."""
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else None
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported architecture {arch!r} in config.json; kvlab supports "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
        if hf.get("mlp_bias"):
            raise UnsupportedModelError("mlp_bias=true is not supported")
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "default":
            scaling = None
        elif rope_type == "llama3":
            scaling = Llama3RopeScaling(
                factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                high_freq_factor=rope["high_freq_factor"],
                original_max_position_embeddings=rope["original_max_position_embeddings"])
        elif rope_type == "linear":
            scaling = LinearRopeScaling(factor=rope["factor"])
        else:
            raise UnsupportedModelError(
                f"rope_type {rope_type!r} is not supported; kvlab supports default, llama3, linear")
        window = None
        if arch == "MistralForCausalLM":
            window = hf.get("sliding_window")
        elif arch == "Qwen2ForCausalLM" and hf.get("use_sliding_window"):
            raise UnsupportedModelError(
                "Qwen2 with use_sliding_window=true (per-layer windows) is not supported")
        if arch == "LlamaForCausalLM" and hf.get("attention_bias"):
            raise UnsupportedModelError("LlamaForCausalLM with attention_bias=true (a bias on o_proj as "
                                        "well as on q/k/v) is not supported")
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=num_heads, num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim, rope_theta=float(rope_theta), rope_scaling=scaling,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", _DEFAULT_CONTEXT[arch]),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=arch == "Qwen2ForCausalLM",      # q/k/v biases: Qwen2's, always
            sliding_window=window, bos_token_id=hf.get("bos_token_id"), eos_token_ids=eos_ids,
            architecture=arch)
