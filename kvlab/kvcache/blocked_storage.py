"""The blocked layout's device storage (LMDeploy TurboMind): one block holds the K and V of every
layer, ``[N, L, 2, P, Hkv, D]``, so a block's whole KV is one contiguous run of memory - one copy
to move or offload. It keeps the ``KVStorage`` contract of ``kvlab.kvcache.storage``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.layouts import BlockedLayout
from kvlab.kvcache.storage import head_axis


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockedKVStorage:
    """K and V of all layers per block: blocks ``[num_blocks, L, 2, P, Hkv, D]`` (index 0 of the
    third axis is K, 1 is V).

    Examples:
        >>> import jax.numpy as jnp
        >>> s = BlockedKVStorage.zeros(num_layers=2, num_pages=4, page_size=8, num_kv_heads=1,
        ...                            head_dim=4, dtype=jnp.float32)
        >>> s = s.write(1, jnp.ones((2, 1, 4)), 2 * jnp.ones((2, 1, 4)), jnp.array([8, 9]))
        >>> s.read_block(1).shape, float(s.read_block(1)[1, 1].sum())
        ((2, 2, 8, 1, 4), 16.0)
    """

    blocks: jax.Array

    @classmethod
    def zeros(cls, *, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
              head_dim: int, dtype) -> BlockedKVStorage:
        shape = (num_pages, num_layers, 2, page_size, num_kv_heads, head_dim)
        return cls(blocks=jnp.zeros(shape, dtype))

    def head_specs(self, axis: str) -> BlockedKVStorage:
        return BlockedKVStorage(blocks=head_axis(6, 4, axis))

    @property
    def page_size(self) -> int:
        return self.blocks.shape[3]

    @property
    def num_pages(self) -> int:
        return self.blocks.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.blocks.shape[4]

    @property
    def dtype(self):
        """Element type of the blocks."""
        return self.blocks.dtype

    @property
    def kv_format(self) -> KVFormat:
        """Plain: the model's dtype."""
        return PLAIN

    @property
    def layout(self) -> BlockedLayout:
        """One block spans all layers: K at index 0 of axis 2, V at 1."""
        return BlockedLayout(num_layers=self.blocks.shape[1], page_size=self.page_size,
                             num_kv_heads=self.num_kv_heads)

    @property
    def arrays(self) -> tuple[jax.Array]:
        """(blocks,), as ``BlockedLayout`` addresses it."""
        return (self.blocks,)

    def with_arrays(self, arrays) -> BlockedKVStorage:
        """The storage holding ``arrays`` = (blocks,)."""
        return BlockedKVStorage(blocks=arrays[0])

    def gather_pages(self, layer, pages: jax.Array, whole=None) -> tuple[jax.Array, jax.Array]:
        """K and V of ``pages`` (any int shape) in one layer: each ``[*pages.shape, P, Hkv, D]``."""
        return self.blocks[pages, layer, 0], self.blocks[pages, layer, 1]

    def calibrate(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> BlockedKVStorage:
        """Plain pages keep no scales: the storage itself."""
        return self

    def write(self, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array) -> BlockedKVStorage:
        """Scatter new tokens of one layer. k_new, v_new: [T, Hkv, D]; slots: [T] flat
        ``block * page_size + offset``, negative for padding rows (dropped)."""
        block = jnp.where(slots >= 0, slots // self.page_size, self.num_pages)
        offset = jnp.where(slots >= 0, slots % self.page_size, 0)
        kv = jnp.stack([k_new, v_new], axis=1).astype(self.blocks.dtype)      # [T, 2, Hkv, D]
        blocks = self.blocks.at[block, layer, :, offset].set(kv, mode="drop")
        return BlockedKVStorage(blocks=blocks)

    @property
    def page_record(self) -> jax.ShapeDtypeStruct:
        """One block's host-tier record: ``[L, 2, P, Hkv, D]``."""
        return jax.ShapeDtypeStruct(self.blocks.shape[1:], self.blocks.dtype)

    def read_pages(self, pages: jax.Array) -> jax.Array:
        """Whole blocks as host-tier records: [n, L, 2, P, Hkv, D] (one contiguous run each)."""
        return self.blocks[pages]

    def write_pages(self, pages: jax.Array, data: jax.Array) -> BlockedKVStorage:
        """Inverse of ``read_pages``; out-of-range block ids are dropped (padding)."""
        return BlockedKVStorage(blocks=self.blocks.at[pages].set(data.astype(self.blocks.dtype), mode="drop",
                                                                 unique_indices=True))

    def read_block(self, block: int) -> jax.Array:
        """The whole KV of one block, all layers: [L, 2, P, Hkv, D] (one contiguous slice)."""
        return self.blocks[block]

    def write_block(self, block: int, data: jax.Array) -> BlockedKVStorage:
        """Put back a block read by ``read_block`` (e.g. from a host offload tier)."""
        return BlockedKVStorage(blocks=self.blocks.at[block].set(data.astype(self.blocks.dtype)))
