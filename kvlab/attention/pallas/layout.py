"""The kernels' view of a storage's cache arrays: rows of ``head_dim`` elements.

Kernels take the whole cache arrays plus a layer index (a slice passed into a kernel is a copy),
each viewed as ``[num_rows, D]`` (a free reshape); the storage's own layout object
(``storage.layout``: ``kvlab.kvcache.layouts.PagedLayout``, ``BlockedLayout``) turns (layer,
page, offset in page, KV head) into a row of those views. A new storage layout is a new storage
class with its layout, and nothing here or in the kernels changes.
"""

from __future__ import annotations

import math

from kvlab.kvcache.layouts import BlockedLayout, KVLayout, PagedLayout

__all__ = ["BlockedLayout", "KVLayout", "PagedLayout", "as_rows"]


def as_rows(arrays):
    """The cache arrays (``storage.arrays``) as ``[num_rows, D]`` views (what the kernels index)."""
    return tuple(a.reshape(math.prod(a.shape[:-1]), a.shape[-1]) for a in arrays)   # rows may be 0 wide

