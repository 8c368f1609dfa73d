"""How the decoder runs its layers: one ``lax.scan`` over the stacked weights, or one unrolled
Python loop. The two give the same numbers; they differ in what XLA makes of them.

* ``ScanLayers`` traces the layer body once, so compile time does not grow with the depth. On the
  GPU, XLA feeds each scanned layer's weights to the matmuls through a ``dynamic-slice`` that it
  materialises: every layer's weights are copied once per step (measured on the H200, Llama-3.2-1B
  shape, bf16: the copies were about 1.1 ms of a 2.4 ms batch-1 step).
* ``UnrolledLayers`` keeps each layer's weights as arrays of their own (``wq_layer3``) and traces
  the body once per layer: no copy, and every layer's matmuls are the same HLO on the same
  shapes, so XLA autotunes them once. (Static slices of the stacked arrays also avoid the copy,
  but each layer's slice is a fusion of its own to autotune: on the lent H200, Llama-3.2-1B
  shape, bf16, batch 256, the step compiled in 24.2 s that way and in 4.9 s with arrays per
  layer, and ran in 2.94 ms against 2.85 ms, 2026-12-02.)

``default_layer_loop()`` unrolls on GPUs and scans elsewhere (XLA:CPU compiles the unrolled form
much more slowly, and CPU runs are tests, where compile time is what matters).

A loop also decides where the stacked weights live (``place``): these two keep them all on the
device; ``kvlab.models.streamed_layers.StreamedLayers`` keeps some layers in host memory and
streams them to the device as they run (ZeRO-Inference's weight offload).

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab.models import LlamaModel, ModelConfig, UnrolledLayers
    >>> model = LlamaModel(ModelConfig.tiny(), seed=0, layer_loop=UnrolledLayers())
    >>> model.dense_logits(jnp.array([1, 5, 7])).shape
    (3, 256)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

# body(carry, (layer_weights, layer_index)) -> (carry, None), lax.scan's body signature.
LayerBody = Callable[[Any, tuple[dict[str, jax.Array], jax.Array]], tuple[Any, None]]


class LayerLoop(Protocol):
    """Places the stacked layer weights and runs ``body`` over the layers.

    ``place`` gets each weight name's ``[L, ...]`` array (NumPy or JAX) and returns the arrays the
    model keeps, by name (the names are the loop's own); ``run`` gets those arrays back and calls
    the body with one layer's weights under the original names (the leading axis dropped) and the
    layer's index as an int32 scalar."""

    def place(self, stacked: dict[str, Any], dtype) -> dict[str, jax.Array]:
        """The arrays to keep for ``stacked`` (``[L, ...]`` each), cast to ``dtype``."""
        ...

    def stacked(self, placed: dict[str, jax.Array]) -> dict[str, np.ndarray]:
        """``place``'s inverse: the ``[L, ...]`` weights by their original names, in host memory."""
        ...

    def run(self, body: LayerBody, carry: Any, placed: dict[str, jax.Array], num_layers: int) -> Any:
        """Returns the carry after the last layer; ``placed`` is what ``place`` returned."""
        ...


def on_device(stacked: dict[str, Any], dtype) -> dict[str, jax.Array]:
    """Every stacked weight as a device array of ``dtype`` (the resident loops' ``place``)."""
    return {name: jnp.asarray(w, dtype=dtype) for name, w in stacked.items()}


def to_host(placed: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Every weight copied to host memory (the resident loops' ``stacked``)."""
    return {name: np.asarray(w) for name, w in placed.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanLayers:
    """One ``lax.scan`` over the layers: compile time independent of depth."""

    def place(self, stacked: dict[str, Any], dtype) -> dict[str, jax.Array]:
        return on_device(stacked, dtype)

    def stacked(self, placed: dict[str, jax.Array]) -> dict[str, np.ndarray]:
        return to_host(placed)

    def run(self, body: LayerBody, carry: Any, stacked: dict[str, jax.Array], num_layers: int) -> Any:
        layer_ids = jnp.arange(num_layers, dtype=jnp.int32)
        carry, _ = jax.lax.scan(body, carry, (stacked, layer_ids))
        return carry


LAYER_SUFFIX = "_layer"
"""``UnrolledLayers`` keeps layer ``i`` of weight ``name`` as ``name + LAYER_SUFFIX + str(i)``."""


def layer_key(name: str, layer: int) -> str:
    """The name under which ``UnrolledLayers`` keeps layer ``layer`` of stacked weight ``name``."""
    return f"{name}{LAYER_SUFFIX}{layer}"


def stacked_name(key: str) -> str:
    """The stacked weight's name of a kept array's name (``wq_layer3`` -> ``wq``; others as they are)."""
    name, suffix, layer = key.rpartition(LAYER_SUFFIX)
    return name if suffix and layer.isdigit() else key


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnrolledLayers:
    """A Python loop over the layers, each layer's weights arrays of their own: no per-step weight
    copies, one autotuning of the layer's matmuls for all layers."""

    def place(self, stacked: dict[str, Any], dtype) -> dict[str, jax.Array]:
        return {layer_key(name, i): jnp.asarray(w[i], dtype=dtype)
                for name, w in stacked.items() for i in range(w.shape[0])}

    def stacked(self, placed: dict[str, jax.Array]) -> dict[str, np.ndarray]:
        names = dict.fromkeys(stacked_name(key) for key in placed)
        num_layers = len(placed) // len(names)
        return {name: np.stack([np.asarray(placed[layer_key(name, i)]) for i in range(num_layers)])
                for name in names}

    def run(self, body: LayerBody, carry: Any, placed: dict[str, jax.Array], num_layers: int) -> Any:
        names = dict.fromkeys(stacked_name(key) for key in placed)
        for layer in range(num_layers):
            weights = {name: placed[layer_key(name, layer)] for name in names}
            carry, _ = body(carry, (weights, jnp.int32(layer)))
        return carry


def default_layer_loop() -> LayerLoop:
    """``UnrolledLayers`` on a GPU backend, ``ScanLayers`` elsewhere."""
    return UnrolledLayers() if jax.default_backend() == "gpu" else ScanLayers()
