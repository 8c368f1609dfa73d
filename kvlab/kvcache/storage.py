"""Device halves of the KV caches: the page arrays, as explicit pytrees.

The host half (a ``KVCache``) decides which page and offset each new token goes to; these pytrees
only hold the arrays, are passed into the jitted step donated, and come back updated in place.
Two layouts share one contract (``KVStorage``: ``write`` new tokens of a layer, ``gather_pages``
of a layer, whole-page copies, and the kernels' view: ``arrays`` addressed by ``layout``):
  * ``PagedKVStorage``: per-layer page pools, k and v ``[L, N, P, Hkv, D]`` (vLLM);
  * ``BlockedKVStorage`` (``kvlab.kvcache.blocked_storage``): one block spans all layers,
    ``[N, L, 2, P, Hkv, D]`` (LMDeploy TurboMind), so a block's whole KV is one contiguous run of
    memory - one copy to move or offload.
A new layout is a new storage class with its own ``layout`` object (``kvlab.kvcache.layouts``);
the attention kernels ask the storage, so nothing in them changes.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.layouts import KVLayout, PagedLayout


class KVStorage(Protocol):
    """The device half of a KV cache: a pytree of arrays holding every layer's K and V pages.

    Shapes: new tokens ``k_new, v_new [T, Hkv, D]`` go to flat ``slots [T]`` (``page * page_size +
    offset``, negative: padding, dropped); ``gather_pages(layer, pages [...])`` returns K and V each
    ``[*pages.shape, P, Hkv, D]``; ``read_pages(pages [n])`` returns host-tier records
    ``[n, L, 2, P, Hkv, D]``. Kernels read ``arrays`` (a tuple, any shapes) through ``layout``
    and put results back with ``with_arrays``.
    """

    @property
    def page_size(self) -> int:
        """Tokens per page."""
        ...

    def head_specs(self, axis: str) -> KVStorage:
        """This storage's pytree with a ``PartitionSpec`` per array that splits its KV-head axis
        over mesh axis ``axis`` (how a tensor-parallel step shards it)."""
        ...

    @property
    def num_pages(self) -> int:
        """Pages in the pool."""
        ...

    @property
    def num_kv_heads(self) -> int:
        """KV heads per token."""
        ...

    @property
    def dtype(self):
        """Element type of the K/V arrays."""
        ...

    @property
    def kv_format(self) -> KVFormat:
        """How the pages encode K and V (``kvlab.kvcache.formats``; static)."""
        ...

    @property
    def layout(self) -> KVLayout:
        """How kernels address a token's K/V row in ``arrays`` (static, hashable)."""
        ...

    @property
    def arrays(self) -> tuple[jax.Array, ...]:
        """The cache arrays, in the order ``layout`` addresses them."""
        ...

    def with_arrays(self, arrays) -> KVStorage:
        """The same storage holding ``arrays`` (same shapes, as returned by a kernel)."""
        ...

    def gather_pages(self, layer, pages: jax.Array, whole=None) -> tuple[jax.Array, jax.Array]:
        """K and V of ``pages`` (any int shape) in one layer: each ``[*pages.shape, P, Hkv, D]``.
        ``whole`` (bool, ``pages``' shape, optional): the reading query sees the page whole; a
        format that keeps unfilled pages in full precision (KIVI) then reads them as they will be
        sealed. Per-token formats ignore it."""
        ...

    def write(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> KVStorage:
        """Scatter one layer's new tokens into their slots."""
        ...

    def calibrate(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> KVStorage:
        """The storage with ``layer``'s format scales set for writing these tokens (a format that
        calibrates on a layer's first write); what a kernel that encodes the new tokens itself
        calls before it writes. ``write`` includes it."""
        ...

    @property
    def page_record(self) -> jax.ShapeDtypeStruct:
        """Shape and dtype of one page's host-tier record (what ``read_pages`` returns per page)."""
        ...

    def read_pages(self, pages: jax.Array) -> jax.Array:
        """Whole pages, all layers, as host-tier records ``[n, *page_record.shape]``."""
        ...

    def write_pages(self, pages: jax.Array, data: jax.Array) -> KVStorage:
        """Inverse of ``read_pages``; ``pages`` are distinct (the scatter assumes it: unique
        indices write several times faster on a GPU), out-of-range ids padding, dropped."""
        ...


def head_axis(ndim: int, at: int, axis: str) -> PartitionSpec:
    """The spec of an ``ndim``-axis array split over mesh axis ``axis`` along its axis ``at``."""
    return PartitionSpec(*(axis if i == at else None for i in range(ndim)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKVStorage:
    """K and V pages of all layers.

    k, v: [num_layers, num_pages, page_size, num_kv_heads, head_dim].

    Examples:
        >>> import jax.numpy as jnp
        >>> s = PagedKVStorage.zeros(num_layers=2, num_pages=4, page_size=8, num_kv_heads=1,
        ...                          head_dim=4, dtype=jnp.float32)
        >>> s = s.write(0, jnp.ones((3, 1, 4)), jnp.ones((3, 1, 4)), jnp.array([8, 9, -1]))
        >>> float(s.k[0, 1].sum())
        8.0
    """

    k: jax.Array
    v: jax.Array

    @classmethod
    def zeros(cls, *, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
              head_dim: int, dtype) -> PagedKVStorage:
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

    def head_specs(self, axis: str) -> PagedKVStorage:
        return PagedKVStorage(k=head_axis(5, 3, axis), v=head_axis(5, 3, axis))

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[3]

    @property
    def dtype(self):
        """Element type of k and v."""
        return self.k.dtype

    @property
    def kv_format(self) -> KVFormat:
        """Plain: the model's dtype."""
        return PLAIN

    @property
    def layout(self) -> PagedLayout:
        """Per-layer page pools: row ``((layer * N + page) * P + offset) * Hkv + head``."""
        return PagedLayout(num_pages=self.num_pages, page_size=self.page_size, num_kv_heads=self.num_kv_heads)

    @property
    def arrays(self) -> tuple[jax.Array, jax.Array]:
        """(k, v), as ``PagedLayout`` addresses them."""
        return self.k, self.v

    def with_arrays(self, arrays) -> PagedKVStorage:
        """The storage holding ``arrays`` = (k, v)."""
        return PagedKVStorage(k=arrays[0], v=arrays[1])

    def gather_pages(self, layer, pages: jax.Array, whole=None) -> tuple[jax.Array, jax.Array]:
        """K and V of ``pages`` (any int shape) in one layer: each ``[*pages.shape, P, Hkv, D]``."""
        return self.k[layer, pages], self.v[layer, pages]

    @property
    def page_record(self) -> jax.ShapeDtypeStruct:
        """One page's host-tier record: ``[L, 2, P, Hkv, D]``."""
        L, _, P, H, D = self.k.shape
        return jax.ShapeDtypeStruct((L, 2, P, H, D), self.k.dtype)

    def read_pages(self, pages: jax.Array) -> jax.Array:
        """Whole pages, all layers, as host-tier records: [n, L, 2, P, Hkv, D]."""
        kv = jnp.stack([self.k[:, pages], self.v[:, pages]], axis=2)     # [L, n, 2, P, Hkv, D]
        return jnp.swapaxes(kv, 0, 1)

    def write_pages(self, pages: jax.Array, data: jax.Array) -> PagedKVStorage:
        """Inverse of ``read_pages``; out-of-range page ids are dropped (padding)."""
        data = jnp.swapaxes(data, 0, 1).astype(self.k.dtype)                # [L, n, 2, P, Hkv, D]
        return PagedKVStorage(k=self.k.at[:, pages].set(data[:, :, 0], mode="drop", unique_indices=True),
                              v=self.v.at[:, pages].set(data[:, :, 1], mode="drop", unique_indices=True))

    def calibrate(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> PagedKVStorage:
        """Plain pages keep no scales: the storage itself."""
        return self

    def write(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> PagedKVStorage:
        """Scatter new tokens into their slots of one layer.

        k_new, v_new: [T, Hkv, D]; slots: [T] int32 flat slot ``page * page_size + offset``,
        negative for padding rows (dropped).
        """
        page = jnp.where(slots >= 0, slots // self.page_size, self.num_pages)  # OOB -> dropped
        offset = jnp.where(slots >= 0, slots % self.page_size, 0)
        k = self.k.at[layer, page, offset].set(k_new.astype(self.k.dtype), mode="drop")
        v = self.v.at[layer, page, offset].set(v_new.astype(self.v.dtype), mode="drop")
        return PagedKVStorage(k=k, v=v)
