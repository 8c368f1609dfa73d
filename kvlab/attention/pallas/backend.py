"""``PallasAttention``: the GPU attention backend (Pallas kernels), same call as
``ReferenceAttention``.

Per layer call: a decode-only step (``batch.decode_only``, known on the host when the batch is
packed) runs the paged decode kernel alone; any other step runs one launch holding prefill programs
for the sequences with more than one query token and decode programs for the single-token ones.
The kernels write every row of the step's output themselves (idle prefill programs zero the
padding rows; a decode-only step starts from a zeroed output of one row per sequence), so no
select or scatter of rows follows a launch but the split-K merge. The KV write of the
step's new tokens goes through ``write_kv`` (a Pallas scatter kernel by default, XLA's scatter
with ``kv_write_kernel=False``).

Example (interpret mode runs the same kernels on a CPU):
    >>> import jax.numpy as jnp
    >>> from kvlab.attention import AttentionOptions, RaggedBatch, ReferenceAttention
    >>> from kvlab.kvcache.storage import PagedKVStorage
    >>> store = PagedKVStorage.zeros(num_layers=1, num_pages=4, page_size=8, num_kv_heads=2,
    ...                              head_dim=16, dtype=jnp.float32)
    >>> batch = RaggedBatch.build(q_tokens=[[1, 2, 3], [4]], q_starts=[0, 5], page_lists=[[0], [2]],
    ...                           page_size=8, token_bucket=16, seq_bucket=2, page_bucket=1)
    >>> k = jnp.linspace(-1, 1, 16 * 2 * 16).reshape(16, 2, 16)
    >>> pallas = PallasAttention(interpret=True)
    >>> store = pallas.write_kv(store, 0, k, -k, batch.slots)
    >>> q = jnp.linspace(-2, 2, 16 * 4 * 16).reshape(16, 4, 16)
    >>> opts = AttentionOptions(sm_scale=0.25)
    >>> out = pallas(q, store, 0, batch, opts)
    >>> bool(jnp.allclose(out, ReferenceAttention()(q, store, 0, batch, opts), atol=1e-5))
    True
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.pallas import mosaic_prefill, triton_calls, triton_kv_write
from kvlab.attention.pallas.config import DecodeConfig, PrefillConfig, check_supported, choose_num_splits
from kvlab.attention.pallas.layout import as_rows, layout_of
from kvlab.attention.pallas.mosaic_prefill import MosaicPrefillConfig
from kvlab.attention.reference import AttentionOptions


def _num_sms(default: int = 132) -> int:
    return getattr(jax.devices()[0], "core_count", None) or default


def _is_hopper() -> bool:
    """A Hopper GPU (compute capability 9.x: wgmma and TMA) is the default device."""
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PallasAttention:
    """Ragged paged attention through Pallas kernels (Triton lowering).

    decode: the decode kernel's tiles. prefill: which prefill kernel, with its tiles: a
    ``PrefillConfig`` (the Triton kernel), a ``MosaicPrefillConfig`` (the Hopper kernel: wgmma, TMA,
    warp specialization; a clear error where it cannot serve the model), or None: the Hopper kernel
    on a Hopper GPU wherever it serves the combination, the Triton kernel otherwise (see
    ``prefill_kernel``). kv_write_kernel: write new K/V with the Pallas scatter kernel (True) or
    XLA's scatter (False); fuse_mixed: with the Triton prefill, a step with prefill chunks runs
    prefill and decode programs in one launch (True) or as two kernels, one after the other (False;
    the Hopper prefill always runs as its own launch); interpret: run the kernels in Pallas
    interpret mode (any device, slow: for tests on CPU); num_sms: SM count for the split-K
    heuristic (None: ask the device).
    """

    decode: DecodeConfig = DecodeConfig()
    prefill: PrefillConfig | MosaicPrefillConfig | None = None
    kv_write_kernel: bool = True
    fuse_mixed: bool = True
    interpret: bool = False
    num_sms: int | None = None
    name: str = "pallas"
    # The engine's runner keeps ``RaggedBatch.has_decodes`` exact for this backend (a compilation
    # per value): a step with prefills and no decodes runs the Hopper prefill alone.
    splits_prefill_only_steps = True

    def check(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, page_size: int, dtype) -> None:
        """Raise a ValueError naming the limit if the kernels cannot serve this model and cache
        (the engine calls it when it is built)."""
        check_supported(q_dtype=dtype, kv_dtype=dtype, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                        head_dim=head_dim, page_size=page_size)

    def write_kv(self, storage, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array):
        """Scatter one layer's new K/V [T, Hkv, D] into ``slots`` [T]; returns the storage."""
        if not self.kv_write_kernel:
            return storage.write(layer, k_new, v_new, slots)
        layout = layout_of(storage)
        arrays = triton_kv_write.write_kv(layout.arrays(storage), k_new, v_new, slots, layer, layout=layout,
                                          page_size=storage.page_size, interpret=self.interpret)
        return layout.rebuild(arrays)

    def prefill_kernel(self, *, dtype, head_dim: int, page_size: int,
                       options: AttentionOptions) -> PrefillConfig | MosaicPrefillConfig:
        """The prefill kernel (its config) that serves this combination; raises a ValueError naming
        the limit when a ``MosaicPrefillConfig`` was asked for and cannot serve it."""
        why = mosaic_prefill.unsupported_reason(dtype=dtype, head_dim=head_dim, page_size=page_size,
                                                options=options)
        if isinstance(self.prefill, MosaicPrefillConfig):
            if why is None and not (self.interpret or _is_hopper()):
                why = ("the Mosaic GPU prefill needs a Hopper GPU (compute capability 9.x), not "
                       f"{jax.devices()[0]}")
            if why is not None:
                raise ValueError(f"{why}; pass prefill=PrefillConfig() for the Triton kernel, or "
                                 "prefill=None to choose per combination")
            return self.prefill
        if self.prefill is not None:
            return self.prefill
        hopper = why is None and not self.interpret and _is_hopper()
        return MosaicPrefillConfig() if hopper else PrefillConfig()

    def num_splits(self, batch: RaggedBatch, storage) -> int:
        """The decode kernel's split-K factor for this batch's (static) shapes."""
        return choose_num_splits(self.decode, num_seqs=batch.num_seq_slots, num_kv_heads=storage.num_kv_heads,
                                 max_kv_len=batch.page_table.shape[1] * storage.page_size,
                                 num_sms=self.num_sms or _num_sms())

    def __call__(self, q: jax.Array, storage, layer, batch: RaggedBatch,
                 options: AttentionOptions) -> jax.Array:
        """q: [T, Hq, D] -> [T, Hq, D]; attention of every scheduled token (the contract of
        ``kvlab.attention.reference.ragged_paged_attention``)."""
        layout = layout_of(storage)
        kv = layout.arrays(storage)
        num_tokens, num_q_heads, head_dim = q.shape
        check_supported(q_dtype=q.dtype, kv_dtype=kv[0].dtype, num_q_heads=num_q_heads,
                        num_kv_heads=storage.num_kv_heads, head_dim=head_dim, page_size=storage.page_size)
        meta = jnp.stack([jnp.asarray(layer, jnp.int32), jnp.asarray(batch.num_seqs, jnp.int32)])
        statics = dict(layout=layout, n_kv=len(kv), group=num_q_heads // storage.num_kv_heads,
                       page_size=storage.page_size, options=options, interpret=self.interpret)
        st_dec = triton_calls.static_for(self.decode, **statics)
        args = (q, as_rows(kv), batch.cu_q_lens, batch.kv_lens, batch.page_table, meta)
        splits = self.num_splits(batch, storage)
        if batch.decode_only:
            return triton_calls.paged_decode(*args, st=st_dec, config=self.decode, num_splits=splits,
                                             decode_only=True)
        pre = self.prefill_kernel(dtype=q.dtype, head_dim=head_dim, page_size=storage.page_size,
                                  options=options)
        if isinstance(pre, MosaicPrefillConfig) and not batch.has_decodes:
            return self._prefill_rows(q, storage, layer, batch, options, pre)   # no decode launch at all
        if self.prefill is None and self.fuse_mixed:
            pre = PrefillConfig()       # decodes too: one fused launch beats Hopper prefill + decode launch
        if self.fuse_mixed and isinstance(pre, PrefillConfig):
            return triton_calls.mixed_step(*args, st_prefill=triton_calls.static_for(pre, **statics),
                                           st_decode=st_dec, prefill_config=pre, num_splits=splits)
        out = self._prefill_rows(q, storage, layer, batch, options, pre)
        return triton_calls.paged_decode(*args, st=st_dec, config=self.decode, num_splits=splits,
                                         decode_only=False, out=out)

    def prefill_rows(self, q: jax.Array, storage, layer, batch: RaggedBatch, options: AttentionOptions):
        """The prefill kernel alone: q [T, Hq, D] -> [T, Hq, D] with the rows of every sequence of
        more than one query token; padding rows zeros, rows of single-token sequences unwritten."""
        pre = self.prefill_kernel(dtype=q.dtype, head_dim=q.shape[2], page_size=storage.page_size,
                                  options=options)
        return self._prefill_rows(q, storage, layer, batch, options, pre)

    def _prefill_rows(self, q, storage, layer, batch: RaggedBatch, options: AttentionOptions, pre):
        layout = layout_of(storage)
        kv = layout.arrays(storage)
        num_q_heads = q.shape[1]
        meta = jnp.stack([jnp.asarray(layer, jnp.int32), jnp.asarray(batch.num_seqs, jnp.int32)])
        if isinstance(pre, MosaicPrefillConfig):
            programs = triton_calls.plan_length(q.shape[0], batch.num_seq_slots, pre.cta_rows)
            seq, q_first, total = triton_calls.prefill_plan(batch.cu_q_lens, meta[1], block_q=pre.cta_rows,
                                                            num_programs=programs, include_decodes=False)
            return mosaic_prefill.ragged_prefill(
                q, layout.tma_arrays(kv), batch.cu_q_lens, batch.kv_lens, batch.page_table,
                jnp.stack([meta[0], meta[1], total]), (seq, q_first), layout=layout, options=options,
                config=pre, interpret=self.interpret,
                num_ctas=2 if self.interpret else self.num_sms or _num_sms())   # 2: several items a CTA
        st = triton_calls.static_for(pre, layout=layout, n_kv=len(kv),
                                     group=num_q_heads // storage.num_kv_heads, page_size=storage.page_size,
                                     options=options, interpret=self.interpret)
        return triton_calls.ragged_prefill(q, as_rows(kv), batch.cu_q_lens, batch.kv_lens, batch.page_table,
                                           meta, st=st, config=pre, include_decodes=False)
