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
    >>> CommandBuffers(inner=CublasGemmsFrom(tokens=128), commands=("FUSION", "CUSTOM_CALL")).for_tokens(256)
    (('xla_gpu_enable_triton_gemm', False), ('xla_gpu_enable_command_buffer', 'FUSION,CUSTOM_CALL'))

``CommandBuffers`` wraps another choice and sets which of a step's operations XLA records into
CUDA graphs (command buffers), so one launch replays them instead of the host launching each
kernel. On the H200 (JAX 0.11.2, the Llama-3.2-1B shape's decode step at batch 1) the host's
dispatch of a step took 0.86 ms with XLA's defaults, 0.43 ms with the kinds in
``STEP_COMMANDS`` (the Pallas kernels' custom calls among them; the device step 1.12 and 1.13
ms), and with command buffers off 2.22 ms, which made the step itself dispatch-bound (2.25 ms).
"""

from __future__ import annotations

import dataclasses
import re
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


# The kinds of kernel launch a step of one device makes, as XLA's ``CommandBufferCmdType`` names
# them (XLA refuses a name it does not know when a step compiles; it also knows control flow,
# WHILE and CONDITIONAL, and COLLECTIVES, which this choice leaves to it).
STEP_COMMANDS = ("FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL", "CUDNN", "DYNAMIC_SLICE_FUSION")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CommandBuffers:
    """``inner``'s options for each step, with XLA recording the kinds of operation in
    ``commands`` into CUDA graphs (``STEP_COMMANDS`` by default, the Pallas kernels' custom calls
    among them; ``()`` turns command buffers off). Only XLA's GPU backend reads the option."""

    inner: XlaOptions = dataclasses.field(default_factory=XlaDefaults)
    commands: tuple[str, ...] = STEP_COMMANDS

    def __post_init__(self):
        if not isinstance(self.inner, XlaOptions):
            raise ValueError(f"CommandBuffers.inner must be an XlaOptions (for_tokens), got "
                             f"{type(self.inner).__name__}")
        commands = None if isinstance(self.commands, str) else tuple(self.commands)
        if commands is None or not all(_is_kind(c) for c in commands):
            raise ValueError(f"CommandBuffers.commands must be a sequence of XLA command-buffer kinds "
                             f"(upper-case names such as {', '.join(STEP_COMMANDS)}), got {self.commands!r}")
        object.__setattr__(self, "commands", commands)     # hashable, and read more than once

    def for_tokens(self, tokens: int) -> Options:
        inner = tuple(o for o in self.inner.for_tokens(tokens) if o[0] != "xla_gpu_enable_command_buffer")
        return inner + (("xla_gpu_enable_command_buffer", ",".join(self.commands)),)


def _is_kind(name) -> bool:
    return isinstance(name, str) and name != "INVALID" and re.fullmatch(r"[A-Z][A-Z_]*", name) is not None


def default_xla_options() -> XlaOptions:
    """``CublasGemmsFrom()`` on a GPU (where it was measured), ``XlaDefaults()`` elsewhere."""
    return CublasGemmsFrom() if jax.default_backend() == "gpu" else XlaDefaults()
