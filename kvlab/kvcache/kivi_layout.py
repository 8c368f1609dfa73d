"""How the kernels address ``KiviPagedKVStorage``'s arrays: staging pages and sealed pages, each a
``PagedLayout`` of its own, plus the sealed pages' key and value metadata."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from kvlab.kvcache.layouts import PagedLayout


@dataclasses.dataclass(frozen=True)
class KiviLayout:
    """``KiviPagedKVStorage``'s arrays, in this order: ``stage_k``, ``stage_v`` ``[L, R, P, Hkv,
    D]`` (the full-precision staging pages, ids ``N .. N + R``: where new rows are written, so
    ``k_rows``/``v_rows`` address them), then the sealed pages' ``k``, ``v`` codes ``[L, N, P,
    Hkv, packed]`` (``sealed_rows``), the keys' per-channel ``k_meta [L, N, Hkv, 2, D]`` (as rows
    of ``D``: ``key_meta_row``, the zero points one row below) and the values' per-token words
    ``v_meta [L, N, Hkv, P, 1]`` (head-major: ``value_meta_rows``). No layer scales; the
    Hopper (TMA) kernels do not read this layout.

    Examples:
        >>> layout = KiviLayout(num_sealed=4, num_staging=2, page_size=8, num_kv_heads=2)
        >>> int(layout.k_rows(1, 5, 3, 1)), int(layout.k_rows(1, 3, 3, 1)), layout.sealed_rows(1, 3, 5, 1)
        (55, -1, 123)
    """

    num_sealed: int
    num_staging: int
    page_size: int
    num_kv_heads: int

    @property
    def staging(self) -> PagedLayout:
        """The staging pages, numbered from 0 (page id minus ``num_sealed``)."""
        return PagedLayout(num_pages=self.num_staging, page_size=self.page_size,
                           num_kv_heads=self.num_kv_heads)

    @property
    def sealed(self) -> PagedLayout:
        """The sealed pages (codes, and head-major value words)."""
        return PagedLayout(num_pages=self.num_sealed, page_size=self.page_size,
                           num_kv_heads=self.num_kv_heads)

    def k_rows(self, layer, pages, offsets, head):
        """Rows of the staging K of tokens at staging ``pages`` (ids ``>= num_sealed``); a sealed
        page gives row -1 (out of range: a write drops it)."""
        staged = pages - self.num_sealed
        return jnp.where(staged >= 0, self.staging.k_rows(layer, staged, offsets, head), -1)

    def v_rows(self, layer, pages, offsets, head):
        """Rows of the staging V: the same numbering as K, in the V array."""
        return self.k_rows(layer, pages, offsets, head)

    def sealed_rows(self, layer, pages, offsets, head):
        """Rows of the sealed codes of tokens at sealed ``pages``."""
        return self.sealed.k_rows(layer, pages, offsets, head)

    def value_meta_rows(self, layer, pages, offsets, head):
        """Rows of the value words of tokens at sealed ``pages`` (a head's tokens consecutive)."""
        return self.sealed.head_major_rows(1, layer, pages, offsets, head)

    def key_meta_row(self, layer, page, head):
        """The row of ``k_meta`` holding a sealed page's per-channel key scales (zeros: one row on)."""
        return ((layer * self.num_sealed + page) * self.num_kv_heads + head) * 2

    k_ref, v_ref = staticmethod(PagedLayout.k_ref), staticmethod(PagedLayout.v_ref)   # the staging K, V

    @staticmethod
    def sealed_ref(refs, which: int):
        """The sealed codes of K (``which=0``) or V (1)."""
        return refs[2 + which]

    @staticmethod
    def key_meta_ref(refs):
        return refs[4]

    @staticmethod
    def value_meta_ref(refs):
        return refs[5]

    k_meta_ref = v_meta_ref = scales_ref = staticmethod(lambda refs: None)   # no per-token words, no scales
