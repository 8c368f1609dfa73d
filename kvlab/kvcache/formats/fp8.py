"""FP8 KV (vLLM's ``kv_cache_dtype="fp8"``, TensorRT-LLM's FP8 KV): each value is divided by its
layer's scale and stored as an 8-bit float; reading multiplies the scale back.

    data = fp8(clip(x / scale, -max, max)),   x' = float(data) * scale

Scales are per layer and per KV head (``PerHead``) or one per layer shared by its heads
(``PerTensor``), for K and V separately, and either given (``StaticScales``: e.g. from a
checkpoint) or calibrated once from the first batch written (``CalibratedScales``: vLLM's
``calculate_kv_scales``, ``scale = amax / range`` with vLLM's ranges, 200 for K and 100 for V, which
leave headroom for later values above the first batch's amax). A storage starts calibrated scales
at zero; the first write of a layer with a zero scale sets it, later writes keep it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.kvcache.formats.base import RowFormat, decode_rows_by_tiles, encode_rows_by_tiles, exact_code_dtype


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerTensor:
    """One scale per layer, shared by its KV heads."""

    def reduce_amax(self, amax_per_head: jax.Array) -> jax.Array:
        """[Hkv] -> [Hkv] (every head gets the layer's maximum)."""
        return jnp.broadcast_to(amax_per_head.max(), amax_per_head.shape)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerHead:
    """One scale per layer and KV head."""

    def reduce_amax(self, amax_per_head: jax.Array) -> jax.Array:
        return amax_per_head


@dataclasses.dataclass(frozen=True, kw_only=True)
class StaticScales:
    """Given scales: ``k`` and ``v`` each a float (every layer and head) or a per-KV-head sequence."""

    k: float | Sequence[float] = 1.0
    v: float | Sequence[float] = 1.0

    def initial(self, num_layers: int, num_kv_heads: int) -> np.ndarray:
        out = np.empty((num_layers, 2, num_kv_heads), np.float32)
        for which, given in enumerate((self.k, self.v)):
            values = np.asarray(given, np.float32).reshape(-1)
            if values.size not in (1, num_kv_heads) or not np.all(values > 0):
                raise ValueError(f"static fp8 {'kv'[which]} scales must be one positive float or one per "
                                 f"KV head ({num_kv_heads}); got {given!r}")
            out[:, which] = values
        return out

    def calibrate(self, layer_scale, x, valid, which):
        return layer_scale


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibratedScales:
    """Scales from the first batch written: ``amax / k_range`` for K, ``amax / v_range`` for V."""

    granularity: PerTensor | PerHead = PerTensor()
    k_range: float = 200.0
    v_range: float = 100.0

    def initial(self, num_layers: int, num_kv_heads: int) -> np.ndarray:
        return np.zeros((num_layers, 2, num_kv_heads), np.float32)       # zero: not calibrated yet

    def calibrate(self, layer_scale, x, valid, which):
        """A head keeps a scale once it has one; it gets one from the first write whose valid rows
        give it a finite amax above zero. A write of no rows or of zeros leaves it uncalibrated
        (scale zero: it encodes with 1 and reads what it stored, zeros, as zeros); so does a write
        holding a NaN or an infinity, whose values then read back as zeros (or NaN)."""
        amax = jnp.where(valid[:, None, None], jnp.abs(x.astype(jnp.float32)), 0.0).max(axis=(0, 2))
        rng = self.k_range if which == 0 else self.v_range
        fresh = self.granularity.reduce_amax(amax) / rng
        fresh = jnp.where(jnp.isfinite(fresh) & (fresh > 0), fresh, 0.0)
        return jnp.where(layer_scale > 0, layer_scale, fresh)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fp8(RowFormat):
    """8-bit float KV with per-layer scales; ``Fp8E4M3`` and ``Fp8E5M2`` name the element type."""

    scales: StaticScales | CalibratedScales = CalibratedScales()
    meta_width: int = 0
    tile_parts: int = 1
    element = jnp.float8_e4m3fn                       # class attribute: the stored element type

    @property
    def name(self) -> str:
        return f"fp8-{jnp.dtype(self.element).name.removeprefix('float8_')}"

    @property
    def max_value(self) -> float:
        return float(jnp.finfo(self.element).max)

    def check(self, *, num_kv_heads: int, head_dim: int) -> None:
        """Any shape; the device check is the kernels' (fp8 needs compute capability 8.9+)."""

    def data_dtype(self, model_dtype) -> jnp.dtype:
        return jnp.dtype(self.element)

    def packed_dim(self, head_dim: int) -> int:
        return head_dim

    def initial_layer_scales(self, *, num_layers: int, num_kv_heads: int) -> np.ndarray:
        return self.scales.initial(num_layers, num_kv_heads)

    def calibrate(self, layer_scale, x, valid, which):
        return self.scales.calibrate(layer_scale, x, valid, which)

    def encode(self, x: jax.Array, layer_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
        return encode_rows_by_tiles(self, x, layer_scale)

    def decode(self, data: jax.Array, meta: jax.Array, layer_scale: jax.Array, dtype) -> jax.Array:
        return decode_rows_by_tiles(self, data, meta, layer_scale, dtype)

    def encode_tile(self, parts, layer_scale):
        """Divided by the layer's scale (1 where a head is not calibrated yet), saturated to the
        element's range, rounded to fp8."""
        scaled = parts[0].astype(jnp.float32) * (1.0 / jnp.where(layer_scale > 0, layer_scale, 1.0))
        return jnp.clip(scaled, -self.max_value, self.max_value).astype(self.element), ()

    def code_dtype(self, model_dtype) -> jnp.dtype:
        return exact_code_dtype(model_dtype)

    def tile_codes(self, data, dtype, *, fields=None):
        """The fp8 values themselves (exact in float16: one packed conversion per two values)."""
        return (data.astype(dtype),)

    def tile_affine(self, meta, layer_scale):
        """The layer's scale, no zero point."""
        return layer_scale, None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fp8E4M3(Fp8):
    """E4M3 (3 mantissa bits, largest 448): the usual fp8 KV.

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.formats import Fp8E4M3, StaticScales
        >>> fmt = Fp8E4M3(scales=StaticScales(k=0.0625, v=0.0625))
        >>> scale = jnp.full(1, 0.0625)
        >>> data, meta = fmt.encode(jnp.full((1, 1, 4), 0.5), scale)
        >>> fmt.name, float(data[0, 0, 0]), float(fmt.decode(data, meta, scale, jnp.float32)[0, 0, 0])
        ('fp8-e4m3fn', 8.0, 0.5)
    """

    element = jnp.float8_e4m3fn


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fp8E5M2(Fp8):
    """E5M2 (2 mantissa bits, largest 57344): more range, less precision."""

    element = jnp.float8_e5m2
