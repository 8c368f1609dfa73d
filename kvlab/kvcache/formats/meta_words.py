"""Per-token metadata as 32-bit words: a (scale, zero) pair of float16 values in one word, so a
kernel loads a token's metadata with one 4-byte load; pages keep the words head-major."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kvlab.kvcache.formats.base import META_DTYPE, KVFormat


def meta_words(fmt: KVFormat) -> int:
    """32-bit words of metadata a token's row takes in the pages (two float16 values a word)."""
    return fmt.meta_width // 2


def pack_meta_word(meta: tuple[jax.Array, ...]) -> jax.Array:
    """A (scale, zero) pair of float16 vectors ``[...]`` as one uint32 word each (scale in the low
    half): a kernel loads a token's metadata with one 4-byte load."""
    lo, hi = (jax.lax.bitcast_convert_type(m.astype(META_DTYPE), jnp.uint16).astype(jnp.uint32) for m in meta)
    return lo | (hi << 16)


def unpack_meta_word(word: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of ``pack_meta_word``: uint32 ``[...]`` -> (scale, zero) float16 ``[...]``."""
    def half(bits):
        return jax.lax.bitcast_convert_type(bits.astype(jnp.uint16), META_DTYPE)
    return half(word & jnp.uint32(0xFFFF)), half(word >> 16)


def meta_word_rows(meta: jax.Array) -> jax.Array:
    """Per-token metadata ``[..., meta_width]`` float16 -> words ``[..., meta_words]`` uint32."""
    if meta.shape[-1] == 0:
        return jnp.zeros(meta.shape, jnp.uint32)
    return pack_meta_word((meta[..., 0], meta[..., 1]))[..., None]


def token_meta(words: jax.Array) -> jax.Array:
    """A page's head-major words ``[..., Hkv, P, meta_words]`` -> per-token metadata ``[..., P,
    Hkv, meta_width]`` float16 (what ``KVFormat.decode`` takes)."""
    words = jnp.swapaxes(words, -3, -2)
    if words.shape[-1] == 0:
        return jnp.zeros(words.shape, jnp.float16)
    return jnp.stack(unpack_meta_word(words[..., 0]), axis=-1)
