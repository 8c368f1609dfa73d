"""Which attention backend a preset's engine runs, asked through the backends' ``check`` contract.

A preset may store its KV in a quantized format (``kvlab.kvcache.formats``) that a backend's
kernels cannot read: ``check(..., kv_format=...)`` raises a ValueError then. ``serving_attention``
keeps the backend asked for (default: the engine's default, the Pallas kernels on a GPU) whenever
its ``check`` accepts the model and the cache's format, and takes ``ReferenceAttention()``, with a
warning that names the refusal, only when the backend serves the model in the plain format but
not in this one. A backend that refuses the model itself is kept, so the engine raises naming the
limit, as it does without a preset. ``kernel_gap`` asks the Pallas kernels the same question for a
typical model shape, so a preset's ``missing`` note says when its format runs on the reference.

Examples:
    >>> from kvlab.kvcache.formats import PLAIN
    >>> kernel_gap(PLAIN, page_size=16)
    ()
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp

from kvlab.kvcache.formats import PLAIN

# the shape kernel_gap asks about: Llama-3-8B's attention (32 query heads, 8 KV heads, head_dim 128)
TYPICAL_SHAPE = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, dtype=jnp.bfloat16)


def refusal(backend, kv_format, *, page_size: int, **shape) -> str | None:
    """Why ``backend`` cannot serve this shape with pages in ``kv_format`` (its ``check``'s
    ValueError), or None when it can. ``shape``: num_q_heads, num_kv_heads, head_dim, dtype."""
    try:
        backend.check(page_size=page_size, kv_format=kv_format, **shape)
    except ValueError as e:
        return str(e)
    return None


def model_shape(model) -> dict:
    """The ``check`` arguments of ``model`` other than the page size and the format."""
    c = model.config
    return dict(num_q_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, dtype=model.dtype)


def serving_attention(model, cache, attention=None):
    """The backend to run ``model`` over ``cache``: ``attention`` (default:
    ``kvlab.attention.select.default_attention()``) unless it serves the model in the plain format
    but refuses the cache's ``kv_format``; then ``ReferenceAttention()``, with a warning."""
    from kvlab.attention import ReferenceAttention
    from kvlab.attention.select import default_attention

    attention = attention or default_attention()
    shape, page_size = model_shape(model), cache.page_size
    why = refusal(attention, cache.kv_format, page_size=page_size, **shape)
    if why is None or refusal(attention, PLAIN, page_size=page_size, **shape) is not None:
        return attention
    warnings.warn(f"the {attention.name} attention backend cannot read the cache's {cache.kv_format.name} KV "
                  f"({why}); this engine runs ReferenceAttention() instead", stacklevel=3)
    return ReferenceAttention()


def kernel_gap(kv_format, *, page_size: int) -> tuple[str, ...]:
    """A ``missing`` note when the Pallas kernels serve a typical model (``TYPICAL_SHAPE``) with
    plain KV in pages of ``page_size`` but refuse ``kv_format``; () otherwise."""
    from kvlab.attention.pallas import PallasAttention

    kernels = PallasAttention(interpret=True)        # interpret: the question is the format, not the device
    if refusal(kernels, kv_format, page_size=page_size, **TYPICAL_SHAPE) is None \
            or refusal(kernels, PLAIN, page_size=page_size, **TYPICAL_SHAPE) is not None:
        return ()
    return (f"attention kernels that read {kv_format.name} KV (dequantizing inside the kernel): kvlab's "
            f"Pallas kernels refuse it, so on a GPU this preset's engine runs ReferenceAttention() "
            f"(with a warning)",)
