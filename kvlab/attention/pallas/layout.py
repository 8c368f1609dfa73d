"""How a kernel addresses one token's K or V row in a KV storage, whatever its layout.

Kernels take the whole cache arrays plus a layer index (a slice passed into a kernel is a copy).
A layout hands them the arrays viewed as rows of ``head_dim`` elements, ``[num_rows, D]`` (a free
reshape), and turns (layer, page, offset in page, KV head) into a row number. One int vector per
tile then addresses the whole ``[tokens, D]`` tile, which keeps the kernels' address arithmetic
to about one operation per element instead of one per array dimension. A new storage layout needs
a new layout object here and nothing else.

Layouts are frozen and hashable (static arguments of the jitted step).
"""

from __future__ import annotations

import dataclasses

from kvlab.kvcache.storage import BlockedKVStorage, PagedKVStorage


@dataclasses.dataclass(frozen=True)
class PagedLayout:
    """``PagedKVStorage``: k and v each ``[L, N, P, Hkv, D]``; row ``((l*N + page)*P + off)*Hkv + h``."""

    num_pages: int
    page_size: int
    num_kv_heads: int

    def arrays(self, storage: PagedKVStorage):
        return storage.k, storage.v

    def rebuild(self, arrays) -> PagedKVStorage:
        return PagedKVStorage(k=arrays[0], v=arrays[1])

    def k_rows(self, layer, pages, offsets, head):
        """Row numbers (in ref ``k_ref``) of the K of tokens at ``pages``/``offsets`` (any shape)."""
        return ((layer * self.num_pages + pages) * self.page_size + offsets) * self.num_kv_heads + head

    def v_rows(self, layer, pages, offsets, head):
        return self.k_rows(layer, pages, offsets, head)

    @staticmethod
    def k_ref(refs):
        return refs[0]

    @staticmethod
    def v_ref(refs):
        return refs[1]

    @staticmethod
    def tma_arrays(arrays):
        """The arrays as a TMA copy addresses them (at most 5 dimensions)."""
        return arrays

    @staticmethod
    def tma_tile(refs, which: int, layer, page, rows, head):
        """The ``[rows, D]`` box of K (``which=0``) or V (1) at (layer, page, rows, head)."""
        return refs[which].at[layer, page, rows, head]


@dataclasses.dataclass(frozen=True)
class BlockedLayout:
    """``BlockedKVStorage``: one array ``[N, L, 2, P, Hkv, D]`` (K at index 0 of axis 2, V at 1)."""

    num_layers: int
    page_size: int
    num_kv_heads: int

    def arrays(self, storage: BlockedKVStorage):
        return (storage.blocks,)

    def rebuild(self, arrays) -> BlockedKVStorage:
        return BlockedKVStorage(blocks=arrays[0])

    def k_rows(self, layer, pages, offsets, head):
        return (((pages * self.num_layers + layer) * 2 * self.page_size + offsets) * self.num_kv_heads
                + head)

    def v_rows(self, layer, pages, offsets, head):
        return self.k_rows(layer, pages, offsets, head) + self.page_size * self.num_kv_heads

    @staticmethod
    def k_ref(refs):
        return refs[0]

    @staticmethod
    def v_ref(refs):
        return refs[0]

    @staticmethod
    def tma_arrays(arrays):
        """``[N * L * 2, P, Hkv, D]``: a TMA descriptor has at most 5 dimensions."""
        blocks = arrays[0]
        return (blocks.reshape(-1, *blocks.shape[3:]),)

    def tma_tile(self, refs, which: int, layer, page, rows, head):
        return refs[0].at[(page * self.num_layers + layer) * 2 + which, rows, head]


def as_rows(arrays):
    """The cache arrays as ``[num_rows, D]`` views (what the kernels index)."""
    return tuple(a.reshape(-1, a.shape[-1]) for a in arrays)


def layout_of(storage):
    """The layout object for a storage pytree; a clear error for anything else."""
    if isinstance(storage, PagedKVStorage):
        return PagedLayout(num_pages=storage.num_pages, page_size=storage.page_size,
                           num_kv_heads=storage.num_kv_heads)
    if isinstance(storage, BlockedKVStorage):
        return BlockedLayout(num_layers=storage.blocks.shape[1], page_size=storage.page_size,
                             num_kv_heads=storage.num_kv_heads)
    raise TypeError("the Pallas kernels read PagedKVStorage or BlockedKVStorage, "
                    f"not {type(storage).__name__}")
