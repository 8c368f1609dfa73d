"""The Triton-lowered launches a step is made of besides the prefill kernels themselves (which are
their own launches: ``PrefillConfig``, ``MosaicPrefillConfig``):

* ``DecodeLaunch``: the decode programs (grid sequence x KV head x split); alone for a step of
  decodes, or after a prefill launch, writing its rows into that launch's output in place;
* ``FusedLaunch``: one launch holding the Triton prefill programs followed by the decode programs,
  so the compute-bound and the bandwidth-bound work share the GPU.

The Triton lowering (``triton_calls``) is imported when a launch is first traced, not when kvlab
is imported.
"""

from __future__ import annotations

import dataclasses

import jax

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.pallas.config import DecodeConfig
from kvlab.attention.pallas.layout import as_rows
from kvlab.attention.pallas.plan import Launch, PallasPlan, PrefillWork


@dataclasses.dataclass(frozen=True)
class DecodeLaunch:
    """The decode kernel with its tiles: the row of every single-token sequence."""

    config: DecodeConfig

    def work(self, batch: RaggedBatch, *, num_tokens: int, group: int) -> PrefillWork:
        """No prefill work."""
        return PrefillWork.empty()

    def __call__(self, q: jax.Array, storage, plan: PallasPlan, meta: jax.Array,
                 out: jax.Array | None) -> jax.Array:
        """Decode rows written into ``out`` (zeros when it is the step's first launch)."""
        from kvlab.attention.pallas import triton_calls
        b = plan.batch
        st = triton_calls.static_for(self.config, storage, plan)
        return triton_calls.paged_decode(q, as_rows(storage.arrays), b.cu_q_lens, b.kv_lens, b.page_table,
                                         meta, plan.decode_rows, st=st, config=self.config,
                                         num_splits=plan.num_splits, decode_only=b.decode_only, out=out)


@dataclasses.dataclass(frozen=True)
class FusedLaunch:
    """Triton prefill programs (``prefill``, a ``PrefillConfig``) and the decode programs in one
    launch; the prefill kernel's work list is the step's."""

    prefill: Launch              # a ``PrefillConfig``: its tiles and its work list
    decode: DecodeLaunch

    def work(self, batch: RaggedBatch, *, num_tokens: int, group: int) -> PrefillWork:
        """The Triton prefill kernel's work list."""
        return self.prefill.work(batch, num_tokens=num_tokens, group=group)

    def __call__(self, q: jax.Array, storage, plan: PallasPlan, meta: jax.Array,
                 out: jax.Array | None) -> jax.Array:
        """The whole step's output (always the step's only launch)."""
        from kvlab.attention.pallas import triton_calls
        b = plan.batch
        return triton_calls.mixed_step(
            q, as_rows(storage.arrays), b.cu_q_lens, b.kv_lens, b.page_table, meta, plan.work,
            plan.decode_rows,
            st_prefill=triton_calls.static_for(self.prefill, storage, plan),
            st_decode=triton_calls.static_for(self.decode.config, storage, plan),
            prefill_config=self.prefill, num_splits=plan.num_splits)
