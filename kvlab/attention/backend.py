"""The reference backend: the plain-jnp specification behind the plan/run contract
(``kvlab.attention.protocol.AttentionBackend``).

Its plan holds what does not depend on the layer: each query row's pages and the keys it may
see (causal, window, sinks), so every layer only gathers, scores and normalizes. The GPU kernels
(``kvlab.attention.pallas.PallasAttention``) sit beside it behind the same calls.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.protocol import query_spec
from kvlab.attention.reference import AttentionOptions, attend_gathered, token_positions, visible_keys
from kvlab.kvcache.formats.base import PLAIN, KVFormat


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReferencePlan:
    """The reference's per-step plan. pages: [T, max_pages] int32, the pages of each query row's
    sequence; visible: [T, max_pages * page_size] bool, the keys each row sees; whole: [T,
    max_pages] bool, the row sees the page whole (its position is at or past the page's last)."""

    batch: RaggedBatch
    pages: jax.Array
    visible: jax.Array
    whole: jax.Array
    options: AttentionOptions = dataclasses.field(metadata=dict(static=True))


@dataclasses.dataclass(frozen=True)
class ReferenceAttention:
    """The plain-jnp specification as a backend: gathers each query row's pages; memory
    O(T x max_kv_len). Right on every device, fast on none; the CPU default.

    Examples:
        >>> import jax.numpy as jnp
        >>> from kvlab.kvcache.storage import PagedKVStorage
        >>> batch = RaggedBatch.build(q_tokens=[[1, 2], [3]], q_starts=[0, 4], page_lists=[[0], [1, 2]],
        ...                           page_size=4, token_bucket=4, seq_bucket=2, page_bucket=2)
        >>> backend = ReferenceAttention()
        >>> backend.specialize(batch).has_decodes, backend.specialize(batch).decode_only
        (True, False)
        >>> storage = PagedKVStorage.zeros(num_layers=1, num_pages=3, page_size=4, num_kv_heads=1,
        ...                                head_dim=8, dtype=jnp.float32)
        >>> q = jnp.ones((4, 2, 8))
        >>> plan = backend.plan(batch, storage, AttentionOptions(sm_scale=0.5), query_spec(q))
        >>> plan.visible.shape, backend.run(q, storage, 0, plan).shape
        ((4, 8), (4, 2, 8))
    """

    name: str = "reference"

    def check(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, page_size: int, dtype,
              kv_format: KVFormat = PLAIN) -> None:
        """Every shape and dtype is supported (see ``PallasAttention.check``)."""

    def specialize(self, batch: RaggedBatch) -> RaggedBatch:
        """One program serves every step: both static flags fixed (no decode-only variant)."""
        return dataclasses.replace(batch, decode_only=False, has_decodes=True)

    def plan(self, batch: RaggedBatch, storage, options: AttentionOptions,
             query: jax.ShapeDtypeStruct) -> ReferencePlan:
        """Each query row's pages and visible keys, for every layer of the step."""
        pages, visible = visible_keys(batch.cu_q_lens, batch.kv_lens, batch.page_table, batch.num_seqs,
                                      page_size=storage.page_size, num_tokens=query.shape[0], options=options)
        _, pos, _ = token_positions(batch.cu_q_lens, batch.kv_lens, query.shape[0])
        page_end = (jnp.arange(pages.shape[1], dtype=jnp.int32) + 1) * storage.page_size - 1
        return ReferencePlan(batch=batch, pages=pages, visible=visible, whole=pos[:, None] >= page_end,
                             options=options)

    def write_kv(self, storage, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array):
        """k_new, v_new: [T, Hkv, D] into flat ``slots`` [T] (negative: padding) of one layer."""
        return storage.write(layer, k_new, v_new, slots)

    def run(self, q: jax.Array, storage, layer, plan: ReferencePlan) -> jax.Array:
        """q: [T, Hq, D] -> [T, Hq, D]: gather the layer's pages, score, mask, normalize."""
        return attend_gathered(q, lambda pages: storage.gather_pages(layer, pages, plan.whole), plan.pages,
                               plan.visible,
                               num_kv_heads=storage.num_kv_heads, options=plan.options)

    def __call__(self, q: jax.Array, storage, layer, batch: RaggedBatch,
                 options: AttentionOptions) -> jax.Array:
        """One-shot ``run`` with a fresh ``plan``."""
        return self.run(q, storage, layer, self.plan(batch, storage, options, query_spec(q)))
