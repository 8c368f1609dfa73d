"""How streamed layers' weights are kept in host memory (``StreamedLayers(host_format=...)``):
as they are, or quantized so that fewer bytes cross the host link each step (ZeRO-Inference's
int8/int4 weights in host memory). The codes travel; the device dequantizes each layer after its
copy, before the layer runs.

A format encodes one stacked weight ``[L, ...]`` into named parts (each ``[L, ...]``, kept under
``name + suffix``) and decodes the parts of one layer - or of all, with the leading axis - back
into the model's dtype, which the parts carry (the scales are kept in it: the codes are rounded
against the scales as stored, so decoding is exact arithmetic on what is stored). Matrices
(``[L, in, out]``; ``h @ w``) are quantized per output channel over their input dimension
(``Int8Channels``) or per group of ``group_size`` input rows (``Int4Groups``, two codes a byte),
symmetric; vectors (norms, biases) stay in the model's dtype.

Examples:
    >>> import numpy as np, jax.numpy as jnp
    >>> w = np.random.default_rng(0).normal(size=(2, 64, 8)).astype(np.float32)
    >>> parts = Int8Channels().encode(w, jnp.float32)
    >>> sorted(parts), parts[""].dtype.name, parts["_scale"].shape
    (['', '_scale'], 'int8', (2, 1, 8))
    >>> bool(np.abs(np.asarray(Int8Channels().decode(parts)) - w).max() < 0.02)
    True
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

import jax.numpy as jnp
import numpy as np


class HostFormat(Protocol):
    """Encodes stacked weights for host memory and decodes them on the device."""

    name: str

    def encode(self, w, dtype) -> dict[str, np.ndarray]:
        """``w``: ``[L, ...]`` (NumPy or JAX) -> parts by name suffix ("" first), each ``[L, ...]``."""
        ...

    def decode(self, parts: dict):
        """The parts of one layer (or of several, with their leading axis) -> the weight, in the
        dtype it was encoded for."""
        ...

    def nbytes(self, shape: tuple[int, ...], dtype) -> int:
        """Bytes of one layer's encoded weight of ``shape`` (no leading layer axis)."""
        ...

    def device_bytes(self, shape: tuple[int, ...], dtype) -> int:
        """Device bytes one layer's weight of ``shape`` takes while its layer runs (the copy and,
        when it is decoded, the decoded weight)."""
        ...


def _plain_bytes(shape, dtype) -> int:
    return int(np.prod(shape)) * jnp.dtype(dtype).itemsize


@dataclasses.dataclass(frozen=True)
class SameDtype:
    """The weights as they are, in the model's dtype (the default, ``SAME_DTYPE``)."""

    name: ClassVar[str] = "same"

    def encode(self, w, dtype) -> dict[str, np.ndarray]:
        return {"": np.asarray(w).astype(dtype)}

    def decode(self, parts: dict):
        return parts[""]

    def nbytes(self, shape, dtype) -> int:
        return _plain_bytes(shape, dtype)

    def device_bytes(self, shape, dtype) -> int:
        return _plain_bytes(shape, dtype)


SAME_DTYPE = SameDtype()


def _stored_scale(absmax: np.ndarray, top: float, dtype) -> np.ndarray:
    """``absmax / top`` as stored in ``dtype`` (1 where a channel is all zeros)."""
    scale = np.where(absmax > 0, absmax / top, 1.0)
    return np.asarray(jnp.asarray(scale, jnp.float32).astype(dtype))


def _dequantize(codes, scale):
    """``codes * scale`` in float32, returned in the scale's dtype."""
    return (codes.astype(jnp.float32) * jnp.asarray(scale).astype(jnp.float32)).astype(scale.dtype)


class _QuantizedMatrices:
    """What the quantized formats share: vectors stay as they are, matrices become codes (``""``)
    and scales (``"_scale"``, in the model's dtype), encoded one layer at a time; on the device a
    layer takes its codes and its decoded weights. A format supplies ``_encode_matrix``,
    ``_decode_matrix`` and ``_matrix_nbytes``."""

    def encode(self, w, dtype) -> dict[str, np.ndarray]:
        if w.ndim < 3:
            return SAME_DTYPE.encode(w, dtype)
        codes, scales = zip(*(self._encode_matrix(np.asarray(w[i], np.float32), dtype)
                              for i in range(w.shape[0])))
        return {"": np.stack(codes), "_scale": np.stack(scales)}

    def decode(self, parts: dict):
        if "_scale" not in parts:
            return parts[""]
        return self._decode_matrix(jnp.asarray(parts[""]), jnp.asarray(parts["_scale"]))

    def nbytes(self, shape, dtype) -> int:
        return _plain_bytes(shape, dtype) if len(shape) < 2 else self._matrix_nbytes(shape, dtype)

    def device_bytes(self, shape, dtype) -> int:
        return self.nbytes(shape, dtype) + (_plain_bytes(shape, dtype) if len(shape) >= 2 else 0)


@dataclasses.dataclass(frozen=True)
class Int8Channels(_QuantizedMatrices):
    """Matrices as int8 codes with a scale per output channel (symmetric)."""

    name: ClassVar[str] = "int8"

    def _encode_matrix(self, matrix: np.ndarray, dtype):
        scale = _stored_scale(np.abs(matrix).max(axis=0, keepdims=True), 127.0, dtype)
        return np.clip(np.rint(matrix / scale.astype(np.float32)), -127, 127).astype(np.int8), scale

    def _decode_matrix(self, codes, scale):
        return _dequantize(codes, scale)

    def _matrix_nbytes(self, shape, dtype) -> int:
        return int(np.prod(shape)) + _plain_bytes(shape[-1:], dtype)


@dataclasses.dataclass(frozen=True)
class Int4Groups(_QuantizedMatrices):
    """Matrices as 4-bit codes (two a byte along the input dimension) with a scale per output
    channel and group of ``group_size`` input rows (symmetric, codes -8..7)."""

    group_size: int = 64
    name: ClassVar[str] = "int4"

    def __post_init__(self):
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"group_size must be an even number >= 2, got {self.group_size}")

    def _check(self, shape) -> None:
        if shape[-2] % self.group_size:
            raise ValueError(f"int4 host weights group {self.group_size} input rows; a weight of shape "
                             f"{tuple(shape)} has {shape[-2]} (use a group size that divides it)")

    def encode(self, w, dtype) -> dict[str, np.ndarray]:
        if w.ndim >= 3:
            self._check(w.shape)
        return super().encode(w, dtype)

    def _encode_matrix(self, matrix: np.ndarray, dtype):
        rows, cols = matrix.shape
        grouped = matrix.reshape(rows // self.group_size, self.group_size, cols)
        scale = _stored_scale(np.abs(grouped).max(axis=1), 7.0, dtype)
        codes = np.clip(np.rint(grouped / scale.astype(np.float32)[:, None, :]), -8, 7)
        nibbles = (codes.astype(np.int8).reshape(rows, cols) & 0xF).astype(np.uint8)
        return nibbles[0::2] | (nibbles[1::2] << 4), scale

    def _decode_matrix(self, packed, scale):
        codes = jnp.stack([packed & 0xF, packed >> 4], axis=-2).astype(jnp.int32)   # [..., in/2, 2, out]
        codes = (codes ^ 8) - 8                                       # sign-extend the nibbles
        *lead, half, _, cols = codes.shape
        grouped = codes.reshape(*lead, 2 * half // self.group_size, self.group_size, cols)
        return _dequantize(grouped, scale[..., :, None, :]).reshape(*lead, 2 * half, cols)

    def _matrix_nbytes(self, shape, dtype) -> int:
        self._check(shape)
        return int(np.prod(shape)) // 2 + _plain_bytes((shape[-2] // self.group_size, shape[-1]), dtype)
