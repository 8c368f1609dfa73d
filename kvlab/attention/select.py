"""Which attention backend an engine uses when the caller names none.

On a GPU: ``PallasAttention`` (the kernels); elsewhere: ``ReferenceAttention`` (the plain-jnp
specification; Pallas GPU kernels only run there in interpret mode, far too slow to serve). Never
a silent fallback: if the kernels cannot serve a model (say an unsupported head size), the engine
raises when it is built, naming the limit, and the caller may pass ``ReferenceAttention()``.
"""

from __future__ import annotations

import jax

from kvlab.attention.backend import ReferenceAttention
from kvlab.attention.pallas import PallasAttention


def default_attention(platform: str | None = None):
    """``PallasAttention()`` on "gpu", else ``ReferenceAttention()`` (platform: jax's default backend)."""
    platform = platform or jax.default_backend()
    return PallasAttention() if platform == "gpu" else ReferenceAttention()
