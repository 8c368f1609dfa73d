"""Device half of a paged KV cache: the page arrays, as an explicit pytree.

The host half (``PagedKVCache``) decides which page and offset each new token goes to; this pytree
only holds the arrays, is passed into the jitted step donated, and comes back updated in place.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKVStorage:
    """K and V pages of all layers.

    k, v: [num_layers, num_pages, page_size, num_kv_heads, head_dim].

    Example:
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

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

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
