"""How a kernel addresses one token's K or V row in a KV storage: the storage's addressing layout.

Kernels take the whole cache arrays plus a layer index (a slice passed into a kernel is a copy).
They see the arrays as rows of ``head_dim`` elements, ``[num_rows, D]`` (a free reshape), and a
layout turns (layer, page, offset in page, KV head) into a row number. One int vector per tile then
addresses the whole ``[tokens, D]`` tile, which keeps the kernels' address arithmetic to about one
operation per element instead of one per array dimension.

Each storage pytree (``kvlab.kvcache.storage``) names its own layout (``storage.layout``) and
hands out its arrays in the order the layout addresses them (``storage.arrays``), so a new storage
layout is a new storage class with a new layout object, and nothing in the kernels changes.
Layouts are frozen and hashable (static arguments of the jitted step).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol


class KVLayout(Protocol):
    """Addressing of a storage's arrays (``storage.arrays``, each viewed as ``[rows, D]``).

    ``k_rows``/``v_rows`` take any broadcastable int arrays and return the row numbers, in the
    array ``k_ref(refs)``/``v_ref(refs)`` picks from the refs of ``storage.arrays``; the ``tma_*``
    pair serves TMA copies (Mosaic GPU), whose descriptors have at most 5 dimensions.
    """

    page_size: int
    num_kv_heads: int

    def k_rows(self, layer, pages, offsets, head):
        """Row numbers of the K of the tokens at ``pages``/``offsets`` (any shape) of ``layer``."""
        ...

    def v_rows(self, layer, pages, offsets, head):
        """Row numbers of the V of the tokens at ``pages``/``offsets`` (any shape) of ``layer``."""
        ...

    def k_ref(self, refs):
        """The ref (of the refs of ``storage.arrays``) that ``k_rows`` index."""
        ...

    def v_ref(self, refs):
        """The ref (of the refs of ``storage.arrays``) that ``v_rows`` index."""
        ...

    def k_meta_ref(self, refs):
        """The ref of the per-token metadata words of K (rows numbered as ``k_meta_rows`` of a
        ``QuantizedLayout``), or None where the pages hold plain values (a format with
        ``meta_width`` 0 never asks)."""
        ...

    def v_meta_ref(self, refs):
        """The ref of the per-token metadata words of V, or None."""
        ...

    def scales_ref(self, refs):
        """The ref of the storage's ``layer_scales [L, 2, Hkv]`` viewed as ``[L * 2, Hkv]`` (row
        ``2 * layer`` K, ``2 * layer + 1`` V), or None where the storage keeps no scales."""
        ...

    def tma_arrays(self, arrays):
        """``storage.arrays`` as a TMA copy addresses them (at most 5 dimensions each)."""
        ...

    def tma_tile(self, refs, which: int, layer, page, rows, head):
        """The ``[rows, D]`` box of K (``which=0``) or V (1) at (layer, page, rows, head), in the
        refs of ``tma_arrays``."""
        ...


@dataclasses.dataclass(frozen=True)
class PagedLayout:
    """``PagedKVStorage``: k and v each ``[L, N, P, Hkv, D]``; row ``((l*N + page)*P + off)*Hkv + h``.

    Examples:
        >>> PagedLayout(num_pages=4, page_size=8, num_kv_heads=2).k_rows(1, 3, 5, 1)
        123
    """

    num_pages: int
    page_size: int
    num_kv_heads: int

    def k_rows(self, layer, pages, offsets, head):
        """Row numbers (in ``k_ref``) of the K of tokens at ``pages``/``offsets`` (any shape)."""
        return ((layer * self.num_pages + pages) * self.page_size + offsets) * self.num_kv_heads + head

    def v_rows(self, layer, pages, offsets, head):
        """Row numbers (in ``v_ref``: the V array, same shape as K) of the V of those tokens."""
        return self.k_rows(layer, pages, offsets, head)

    def head_major_rows(self, which: int, layer, pages, offsets, head):
        """Rows of an array laid out ``[L, N, Hkv, P, ...]`` (one per K and V, ``which`` unused):
        a head's consecutive tokens in a page are consecutive rows."""
        return ((layer * self.num_pages + pages) * self.num_kv_heads + head) * self.page_size + offsets

    @staticmethod
    def k_ref(refs):
        """K is the first array."""
        return refs[0]

    @staticmethod
    def v_ref(refs):
        """V is the second array."""
        return refs[1]

    k_meta_ref = v_meta_ref = scales_ref = staticmethod(lambda refs: None)   # plain pages

    @staticmethod
    def tma_arrays(arrays):
        """The arrays as a TMA copy addresses them (5 dimensions already)."""
        return arrays

    @staticmethod
    def tma_tile(refs, which: int, layer, page, rows, head):
        """The ``[rows, D]`` box of K (``which=0``) or V (1) at (layer, page, rows, head)."""
        return refs[which].at[layer, page, rows, head]


@dataclasses.dataclass(frozen=True)
class BlockedLayout:
    """``BlockedKVStorage``: one array ``[N, L, 2, P, Hkv, D]`` (K at index 0 of axis 2, V at 1).

    Examples:
        >>> layout = BlockedLayout(num_layers=2, page_size=8, num_kv_heads=1)
        >>> layout.k_rows(1, 3, 5, 0), layout.v_rows(1, 3, 5, 0)
        (117, 125)
    """

    num_layers: int
    page_size: int
    num_kv_heads: int

    def k_rows(self, layer, pages, offsets, head):
        """Row numbers of the K of tokens at ``pages``/``offsets`` (any shape) of ``layer``."""
        return (((pages * self.num_layers + layer) * 2 * self.page_size + offsets) * self.num_kv_heads
                + head)

    def v_rows(self, layer, pages, offsets, head):
        """V sits one page of rows after K in the same block."""
        return self.k_rows(layer, pages, offsets, head) + self.page_size * self.num_kv_heads

    def head_major_rows(self, which: int, layer, pages, offsets, head):
        """Rows of an array laid out ``[N, L, 2, Hkv, P, ...]``: K (``which=0``) or V (1), a
        head's consecutive tokens in a block being consecutive rows."""
        return ((((pages * self.num_layers + layer) * 2 + which) * self.num_kv_heads + head) * self.page_size
                + offsets)

    @staticmethod
    def k_ref(refs):
        """K and V share the one array."""
        return refs[0]

    @staticmethod
    def v_ref(refs):
        """K and V share the one array."""
        return refs[0]

    k_meta_ref = v_meta_ref = scales_ref = staticmethod(lambda refs: None)   # plain pages

    @staticmethod
    def tma_arrays(arrays):
        """``[N * L * 2, P, Hkv, D]``: a TMA descriptor has at most 5 dimensions."""
        blocks = arrays[0]
        return (blocks.reshape(-1, *blocks.shape[3:]),)

    def tma_tile(self, refs, which: int, layer, page, rows, head):
        """The ``[rows, D]`` box of K (``which=0``) or V (1) at (layer, page, rows, head)."""
        return refs[0].at[(page * self.num_layers + layer) * 2 + which, rows, head]


@dataclasses.dataclass(frozen=True)
class QuantizedLayout:
    """A quantized storage's arrays: the data arrays of ``rows`` (a ``PagedLayout`` or
    ``BlockedLayout``, ``num_data`` arrays), then the same number of metadata arrays of 32-bit
    words, head-major within a page (``k_meta_rows``; none for a format without metadata, which
    never asks for them), then ``layer_scales [L, 2, Hkv]``.

    Examples:
        >>> layout = QuantizedLayout(PagedLayout(num_pages=4, page_size=8, num_kv_heads=2), num_data=2)
        >>> refs = ("k", "v", "k_meta", "v_meta", "scales")
        >>> layout.k_rows(1, 3, 5, 1), layout.v_meta_ref(refs), layout.scales_ref(refs)
        (123, 'v_meta', 'scales')
    """

    rows: PagedLayout | BlockedLayout
    num_data: int

    @property
    def page_size(self) -> int:
        return self.rows.page_size

    @property
    def num_kv_heads(self) -> int:
        return self.rows.num_kv_heads

    def k_rows(self, layer, pages, offsets, head):
        return self.rows.k_rows(layer, pages, offsets, head)

    def v_rows(self, layer, pages, offsets, head):
        return self.rows.v_rows(layer, pages, offsets, head)

    def k_ref(self, refs):
        return self.rows.k_ref(refs)

    def v_ref(self, refs):
        return self.rows.v_ref(refs)

    def k_meta_rows(self, layer, pages, offsets, head):
        """Rows of the K metadata words (head-major within a page, see ``head_major_rows``)."""
        return self.rows.head_major_rows(0, layer, pages, offsets, head)

    def v_meta_rows(self, layer, pages, offsets, head):
        """Rows of the V metadata words."""
        return self.rows.head_major_rows(1, layer, pages, offsets, head)

    def k_meta_ref(self, refs):
        return self.rows.k_ref(refs[self.num_data:])

    def v_meta_ref(self, refs):
        return self.rows.v_ref(refs[self.num_data:])

    @staticmethod
    def scales_ref(refs):
        return refs[-1]

    def tma_arrays(self, arrays):
        return self.rows.tma_arrays(arrays)

    def tma_tile(self, refs, which: int, layer, page, rows, head):
        return self.rows.tma_tile(refs, which, layer, page, rows, head)
