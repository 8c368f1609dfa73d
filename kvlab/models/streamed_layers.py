"""Weight offload as a layer loop (DeepSpeed ZeRO-Inference): the first ``num_resident`` layers
stay on the device, the rest live in pinned host memory and are copied to the device one layer at
a time inside the jitted step, each copy freed when its layer has run. The device holds the
resident layers, the embedding and head, and one or two streamed layers: a model larger than
the device runs, at the price of moving the streamed weights over the host link every step.

The streamed layers run in one ``lax.scan`` whose body slices its layer out of the host arrays
and moves it to the device (``jax.device_put`` inside the jit, a DMA from pinned memory).
``prefetch=1`` double-buffers: the body also starts the next layer's copy and carries it, so the
copy may overlap this layer's compute, at one more layer of device memory. On the lent H200
(2026-12-01, JAX 0.11.2, Llama-3-8B-shaped bf16 layer matmuls, 14 GB streamed) the whole-model
copy ran at 54.3 GB/s, a step streaming every layer took 1.12x that copy at 1 token and 1.25x at
2048 tokens without prefetch, and 1.18x / 1.29x with it: XLA did not run the copies beside the
compute. ``benchmarks/weight_offload.py`` measures the engine.

Large batches are what make offload pay: the bytes moved per step are fixed, so tokens/s grow
with the batch until compute matches the copy (ZeRO-Inference's argument for full offload with
a larger batch over partial offload).

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab.models import LlamaModel, ModelConfig, StreamedLayers
    >>> model = LlamaModel(ModelConfig.tiny(), seed=0, layer_loop=StreamedLayers(num_resident=1))
    >>> model.w_qkv_offloaded[...].sharding.memory_kind, model.w_qkv[...].shape[0]
    ('pinned_host', 1)
    >>> model.dense_logits(jnp.array([1, 5, 7])).shape
    (3, 256)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from kvlab.models.config import ModelConfig
from kvlab.models.host_formats import SAME_DTYPE, HostFormat
from kvlab.models.layer_loop import LayerBody, LayerLoop, default_layer_loop
from kvlab.models.llama import layer_weight_shapes, weight_shapes

OFFLOADED = "_offloaded"
"""Suffix of the names under which the streamed layers' weights are kept (then the host format's
part suffix: ``w_qkv_offloaded``, ``w_qkv_offloaded_scale``)."""


def layer_bytes(config: ModelConfig, dtype) -> tuple[int, int]:
    """(bytes of one layer's weights, bytes of the weights outside the layers) in ``dtype``."""
    size = jnp.dtype(dtype).itemsize
    per_layer = sum(int(np.prod(s[1:])) for s in layer_weight_shapes(config).values()) * size
    everything = sum(int(np.prod(s)) for s in weight_shapes(config).values()) * size
    return per_layer, everything - per_layer * config.num_layers


def streamed_layer_bytes(config: ModelConfig, dtype, host_format: HostFormat) -> tuple[int, int]:
    """(bytes one streamed layer moves over the host link, device bytes it takes while it runs)."""
    shapes = [s[1:] for s in layer_weight_shapes(config).values()]
    return (sum(host_format.nbytes(s, dtype) for s in shapes),
            sum(host_format.device_bytes(s, dtype) for s in shapes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamedLayers:
    """Layers ``[0, num_resident)`` on the device (run by ``resident_loop``), the rest in pinned
    host memory as ``host_format`` keeps them (``kvlab.models.host_formats``: as they are, or
    int8/int4 codes the device dequantizes), streamed per layer with ``prefetch`` (0 or 1) layers
    copied ahead."""

    num_resident: int = 0
    prefetch: int = 0
    resident_loop: LayerLoop = dataclasses.field(default_factory=default_layer_loop)
    host_format: HostFormat = SAME_DTYPE

    def __post_init__(self):
        if self.num_resident < 0:
            raise ValueError(f"num_resident must be >= 0, got {self.num_resident}")
        if self.prefetch not in (0, 1):
            raise ValueError(f"prefetch must be 0 (copy each layer at its turn) or 1 (double-buffered), "
                             f"got {self.prefetch}")

    @classmethod
    def for_budget(cls, config: ModelConfig, *, device_bytes: int, dtype, prefetch: int = 0,
                   host_format: HostFormat = SAME_DTYPE) -> StreamedLayers:
        """As many leading layers resident as ``device_bytes`` of weights hold after the embedding,
        head and the ``1 + prefetch`` streamed-layer buffers (a copy and its decoded weights)."""
        per_layer, other = layer_bytes(config, dtype)
        _, buffer = streamed_layer_bytes(config, dtype, host_format)
        floor = other + (1 + prefetch) * buffer
        if device_bytes < floor:
            raise ValueError(f"a device budget of {device_bytes} bytes does not hold the embedding and "
                             f"head ({other} bytes) and {1 + prefetch} streamed layer(s) ({buffer} "
                             f"bytes each); the least is {floor}")
        resident = min(config.num_layers, (device_bytes - floor) // per_layer)
        return cls(num_resident=int(resident), prefetch=prefetch, host_format=host_format)

    # ------------------------------------------------------------------------------------------
    def place(self, stacked: dict[str, Any], dtype) -> dict[str, jax.Array]:
        """``name``: layers ``[0, R)`` on the device; ``name + OFFLOADED`` (and its format's other
        parts): the rest, encoded by ``host_format``, in pinned host memory."""
        num_layers = len(next(iter(stacked.values())))
        if self.num_resident > num_layers:
            raise ValueError(f"num_resident={self.num_resident} but the model has {num_layers} layers")
        pinned = SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
        placed = {}
        for name, w in stacked.items():
            if self.num_resident:
                placed[name] = jnp.asarray(w[:self.num_resident], dtype=dtype)
            if self.num_resident < num_layers:
                for suffix, part in self.host_format.encode(w[self.num_resident:], dtype).items():
                    placed[name + OFFLOADED + suffix] = jax.device_put(part, pinned)
        return placed

    def stacked(self, placed: dict[str, jax.Array]) -> dict[str, np.ndarray]:
        resident, host = _split(placed)
        stacked = {}
        for name in set(resident) | set(host):
            layers = [np.asarray(resident[name])] if name in resident else []
            if name in host:
                parts = {suffix: np.asarray(part) for suffix, part in host[name].items()}
                layers.append(np.asarray(self.host_format.decode(parts)))
            stacked[name] = np.concatenate(layers)
        return stacked

    def run(self, body: LayerBody, carry: Any, placed: dict[str, jax.Array], num_layers: int) -> Any:
        resident, host = _split(placed)
        if self.num_resident:
            carry = self.resident_loop.run(body, carry, resident, self.num_resident)
        if self.num_resident < num_layers:
            carry = self._stream(body, carry, host, num_layers - self.num_resident)
        return carry

    def _stream(self, body: LayerBody, carry: Any, host: dict[str, dict[str, jax.Array]], count: int) -> Any:
        device = SingleDeviceSharding(jax.devices()[0])
        first, decode = self.num_resident, self.host_format.decode

        def fetch(i):
            def layer(part):
                return jax.device_put(jax.lax.dynamic_index_in_dim(part, i, 0, keepdims=False), device)
            return {name: decode({suffix: layer(part) for suffix, part in parts.items()})
                    for name, parts in host.items()}

        steps = jnp.arange(count, dtype=jnp.int32)
        if self.prefetch == 0:
            carry, _ = jax.lax.scan(lambda c, i: body(c, (fetch(i), i + first)), carry, steps)
            return carry

        def ahead(state, i):
            c, weights = state
            upcoming = fetch(jnp.minimum(i + 1, count - 1))
            c, _ = body(c, (weights, i + first))
            return (c, upcoming), None

        (carry, _), _ = jax.lax.scan(ahead, (carry, fetch(jnp.int32(0))), steps)
        return carry


def _split(placed: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, dict[str, jax.Array]]]:
    """(resident weights by name, streamed weights' parts by name and part suffix)."""
    resident, host = {}, {}
    for key, w in placed.items():
        name, offloaded, suffix = key.partition(OFFLOADED)
        if offloaded:
            host.setdefault(name, {})[suffix] = w
        else:
            resident[name] = w
    return resident, host


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightBudget:
    """Device bytes for a model's weights (a preset's setting, before the model is known): the
    layer loop that streams what does not fit, kept in host memory as ``host_format`` says.
    ``device_bytes=0`` streams every layer."""

    device_bytes: int
    prefetch: int = 0
    host_format: HostFormat = SAME_DTYPE

    def layer_loop(self, config: ModelConfig, dtype) -> StreamedLayers:
        if self.device_bytes == 0:
            return StreamedLayers(num_resident=0, prefetch=self.prefetch, host_format=self.host_format)
        return StreamedLayers.for_budget(config, device_bytes=self.device_bytes, dtype=dtype,
                                         prefetch=self.prefetch, host_format=self.host_format)
