"""XLA compiler options per step shape: which GEMMs a step compiles to.

XLA's GPU backend compiles a matmul either as a Triton GEMM it generates and autotunes (fusing
the norm's multiply or a slice into it) or as a cuBLAS call. Measured on the H200 (Llama-3.2-1B
shape, bf16, `docs/benchmarks.md`): at 128 and 256 tokens a step cuBLAS is 4-8% faster (its
q/k/v and output projections are faster than XLA's Triton GEMMs there, and XLA folds the
residual adds into the cuBLAS calls), at 32 tokens they tie, and at one token cuBLAS is 50%
slower (the float32 LM head becomes a GEMV over a converted copy of the embedding). So the choice depends on
the step's size, and a step's options are chosen from its padded token count.

``XlaOptions`` is the contract: ``for_tokens(tokens)`` gives the options, as ``(name, value)``
pairs of XLA's debug options (hashable values: bools, ints, strings), that a step of ``tokens``
padded tokens compiles with. Each distinct set (the runner sorts the pairs) compiles its own
executables (``jax.jit(..., compiler_options=...)``).

Examples:
    >>> CublasGemmsFrom(tokens=128).for_tokens(256)
    (('xla_gpu_enable_triton_gemm', False),)
    >>> CublasGemmsFrom(tokens=128).for_tokens(16)
    ()
    >>> XlaDefaults().for_tokens(256)
    ()
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import jax

Options = tuple[tuple[str, object], ...]


@runtime_checkable
class XlaOptions(Protocol):
    """Chooses the XLA compiler options of a step from its padded token count."""

    def for_tokens(self, tokens: int) -> Options:
        """``(name, value)`` pairs of XLA debug options (hashable values); ``()`` for XLA's
        defaults."""
        ...


@dataclasses.dataclass(frozen=True)
class XlaDefaults:
    """Every step with XLA's default options."""

    def for_tokens(self, tokens: int) -> Options:
        return ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class CublasGemmsFrom:
    """Steps of at least ``tokens`` padded tokens use cuBLAS for their matmuls (XLA's Triton GEMMs
    off); smaller steps keep XLA's defaults. Only XLA's GPU backend reads the option."""

    tokens: int = 128

    def __post_init__(self):
        if self.tokens < 1:
            raise ValueError(f"CublasGemmsFrom.tokens must be >= 1, got {self.tokens}")

    def for_tokens(self, tokens: int) -> Options:
        return (("xla_gpu_enable_triton_gemm", False),) if tokens >= self.tokens else ()


def default_xla_options() -> XlaOptions:
    """``CublasGemmsFrom()`` on a GPU (where it was measured), ``XlaDefaults()`` elsewhere."""
    return CublasGemmsFrom() if jax.default_backend() == "gpu" else XlaDefaults()
