"""Which attention backend an engine uses, and whether the Pallas kernels can run here.

When the caller names none: on a GPU ``PallasAttention`` (the kernels); elsewhere
``ReferenceAttention`` (the plain-jnp specification; Pallas GPU kernels only run there in
interpret mode, far too slow to serve). Never a silent fallback: if the kernels cannot serve a
model (say an unsupported head size), the engine raises when it is built, naming the limit, and
the caller may pass ``ReferenceAttention()``. Asking for the kernels on a machine without a GPU
(``--attention pallas``) is refused at once by ``check_pallas_device``, before anything compiles,
instead of surfacing JAX's "Only interpret mode is supported" from deep inside the first step.
"""

from __future__ import annotations

import jax

from kvlab.attention.backend import ReferenceAttention
from kvlab.attention.pallas import PallasAttention
from kvlab.attention.pallas.device import check_pallas_device

BACKEND_NAMES = ("auto", "pallas", "reference")


def default_attention(platform: str | None = None):
    """``PallasAttention()`` on "gpu", else ``ReferenceAttention()`` (platform: jax's default backend)."""
    platform = platform or jax.default_backend()
    return PallasAttention() if platform == "gpu" else ReferenceAttention()


def attention_by_name(name: str, platform: str | None = None):
    """The backend for a command-line name: "auto" (``default_attention``), "pallas" (checked
    with ``check_pallas_device`` first) or "reference"."""
    if name == "auto":
        return default_attention(platform)
    if name == "pallas":
        check_pallas_device(platform=platform)
        return PallasAttention()
    if name == "reference":
        return ReferenceAttention()
    raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
