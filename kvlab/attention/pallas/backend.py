"""PallasAttention: the attention backend (``kvlab.attention.protocol.AttentionBackend``) that
runs the Pallas kernels.

``plan`` (once per step, before the layer scan) picks the step's launches and computes what they
share: a step of decodes alone runs the decode kernel (``decode_only``); a step with prefill chunks
runs what the prefill strategy (``prefill=``, see ``prefill.py``) chooses: the fused Triton launch,
a prefill kernel followed by the decode kernel writing into its output in place, or the Hopper
prefill alone (no decodes). The plan also holds the prefill work list, the decode rows, the split-K
factor and ``meta``; ``run`` (per layer) only fills in the layer index and launches.

No Pallas lowering is imported with this module: the Triton one loads when a launch is first
traced, the Mosaic GPU one when a Hopper prefill is.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.pallas import tuned
from kvlab.attention.pallas.config import DecodeConfig, check_supported, choose_num_splits
from kvlab.attention.pallas.device import check_fp8_device, check_pallas_device, num_sms
from kvlab.attention.pallas.launches import DecodeLaunch
from kvlab.attention.pallas.plan import Combination, Launch, PallasPlan, decode_rows
from kvlab.attention.pallas.prefill import AutoPrefill, PrefillKernel, PrefillStrategy
from kvlab.attention.protocol import query_spec
from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, KVFormat
from kvlab.kvcache.formats.page_group import PageGroupFormat


@dataclasses.dataclass(frozen=True, kw_only=True)
class PallasAttention:
    """Ragged paged attention through Pallas kernels (Triton lowering; the Hopper prefill with
    the Mosaic GPU lowering).

    decode: the decode kernel's tiles (``DecodeConfig``, always used when given), or None: the
    tuned tiles of ``decode_table`` for this device kind and the step's static shapes
    (``decode_config``; see ``tuned.py``), the generic ``DecodeConfig()`` on devices the table does
    not list. decode_table: that table (``tuned.TUNED``; one's own for experiments). prefill: the
    prefill strategy (``prefill.PrefillStrategy``): ``PrefillConfig`` (the Triton kernel),
    ``MosaicPrefillConfig`` (the Hopper kernel: wgmma, TMA, warp specialization; a clear error
    where it cannot serve the model), or None, meaning ``AutoPrefill()``: the Hopper kernel on a
    Hopper GPU for steps of prefills alone wherever it serves the combination, the Triton kernel
    otherwise (see ``prefill_kernel``). kv_write_kernel: write new K/V with the Pallas scatter
    kernel (True) or XLA's scatter (False); fuse_mixed: with the Triton prefill, a step with
    prefill chunks runs prefill and decode programs in one launch (True) or as two kernels, one
    after the other (False; the Hopper prefill always runs as its own launch); interpret: run the
    kernels in Pallas interpret mode (any device, slow: for tests on CPU); num_sms: SM count for
    the split-K heuristic and persistent grids (None: ask the device).
    """

    decode: DecodeConfig | None = None
    decode_table: tuple[tuned.DecodeTiles, ...] = tuned.TUNED
    prefill: PrefillStrategy | None = None
    kv_write_kernel: bool = True
    fuse_mixed: bool = True
    interpret: bool = False
    num_sms: int | None = None
    name: str = "pallas"

    # ---- the contract ----------------------------------------------------------------------
    def check(self, *, num_q_heads: int, num_kv_heads: int, head_dim: int, page_size: int, dtype,
              kv_format: KVFormat = PLAIN) -> None:
        """Raise a ValueError naming the limit if the kernels cannot serve this model and cache
        (the engine calls it when it is built)."""
        check_kernel_format(kv_format, head_dim=head_dim, page_size=page_size, interpret=self.interpret)
        check_supported(q_dtype=dtype, kv_dtype=dtype, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                        head_dim=head_dim, page_size=page_size)
        check_pallas_device(interpret=self.interpret)

    def specialize(self, batch: RaggedBatch) -> RaggedBatch:
        """``decode_only`` kept exact (a step of decodes alone runs the decode kernel alone);
        ``has_decodes`` kept exact only where the prefill strategy launches differently for steps
        without decodes (the Hopper prefill), fixed to True otherwise."""
        return self._strategy().specialize(batch, interpret=self.interpret)

    def plan(self, batch: RaggedBatch, storage, options: AttentionOptions,
             query: jax.ShapeDtypeStruct) -> PallasPlan:
        """The step's launches and everything they share (see the module docstring); query: the
        shape ``[T, Hq, D]`` and dtype of the queries. Raises a ValueError naming the limit for
        a combination no kernel serves (or a forced Hopper prefill cannot)."""
        _, num_q_heads, head_dim = query.shape
        check_kernel_format(storage.kv_format, head_dim=head_dim, page_size=storage.page_size,
                            interpret=self.interpret)
        check_supported(q_dtype=query.dtype, kv_dtype=storage.dtype, num_q_heads=num_q_heads,
                        num_kv_heads=storage.num_kv_heads, head_dim=head_dim, page_size=storage.page_size)
        decode = DecodeLaunch(self.decode_config(batch, storage, head_dim=head_dim))
        if batch.decode_only:
            launches = (decode,)
        else:
            launches = self._strategy().launches(self._combination(query, storage, options), decode,
                                                 has_decodes=batch.has_decodes, fuse_mixed=self.fuse_mixed)
        return self._plan(launches, batch, storage, options, query)

    def write_kv(self, storage, layer, k_new: jax.Array, v_new: jax.Array, slots: jax.Array):
        """Scatter one layer's new K/V [T, Hkv, D] into ``slots`` [T], encoded in the storage's KV
        format (in the kernel; a format that calibrates sets the layer's scales first); returns the
        storage."""
        if not self.kv_write_kernel:
            return storage.write(layer, k_new, v_new, slots)
        from kvlab.attention.pallas import triton_kv_write  # the Triton lowering, on first use
        storage = storage.calibrate(layer, k_new, v_new, slots)
        arrays = triton_kv_write.write_kv(storage.arrays, k_new, v_new, slots, layer, layout=storage.layout,
                                          page_size=storage.page_size,
                                          kv_format=storage.kv_format.write_format, interpret=self.interpret)
        return storage.with_arrays(arrays)

    def run(self, q: jax.Array, storage, layer, plan: PallasPlan) -> jax.Array:
        """q: [T, Hq, D] -> [T, Hq, D] for ``layer``: the plan's launches, in order."""
        if (q.shape, q.dtype) != (plan.query.shape, plan.query.dtype):
            raise ValueError(f"queries {q.dtype}{list(q.shape)} do not match the plan's "
                             f"{plan.query.dtype}{list(plan.query.shape)}")
        meta = plan.layer_meta(layer)
        out = None
        for launch in plan.launches:
            out = launch(q, storage, plan, meta, out)
        return out

    def __call__(self, q: jax.Array, storage, layer, batch: RaggedBatch,
                 options: AttentionOptions) -> jax.Array:
        """q: [T, Hq, D] -> [T, Hq, D]; attention of every scheduled token (the contract of
        ``kvlab.attention.reference.ragged_paged_attention``): ``run`` with a fresh ``plan``."""
        return self.run(q, storage, layer, self.plan(batch, storage, options, query_spec(q)))

    # ---- the kernels it picks ----------------------------------------------------------------
    def prefill_kernel(self, *, dtype, head_dim: int, page_size: int, options: AttentionOptions,
                       kv_format: KVFormat = PLAIN) -> PrefillKernel:
        """The prefill kernel (its config) that serves this combination; raises a ValueError naming
        the limit when a ``MosaicPrefillConfig`` was asked for and cannot serve it."""
        return self._strategy().resolve(Combination(dtype=dtype, head_dim=head_dim, page_size=page_size,
                                                    options=options, interpret=self.interpret,
                                                    kv_format=kv_format))

    def prefill_rows(self, q: jax.Array, storage, layer, batch: RaggedBatch, options: AttentionOptions):
        """The prefill kernel alone: q [T, Hq, D] -> [T, Hq, D] with the rows of every sequence of
        more than one query token; padding rows zeros, rows of single-token sequences unwritten."""
        kernel = self.prefill_kernel(dtype=q.dtype, head_dim=q.shape[2], page_size=storage.page_size,
                                     options=options, kv_format=storage.kv_format)
        return self.run(q, storage, layer, self._plan((kernel,), batch, storage, options, query_spec(q)))

    def decode_config(self, batch: RaggedBatch, storage, *, head_dim: int) -> DecodeConfig:
        """The decode kernel's tiles for this batch's (static) shapes and the queries' head dim:
        ``decode`` when given, else the tuned tiles for this device kind and shape class
        (``tuned.tuned_decode``); its ``block_k`` is the page for a format read a page a tile (KIVI)."""
        config = self.decode
        if config is None:
            config = tuned.tuned_decode(tuned.device_kind(), self._decode_shape(batch, storage, head_dim),
                                        self.decode_table)
        tile = storage.kv_format.tile_tokens(config.block_k, storage.page_size)
        return config if tile == config.block_k else dataclasses.replace(config, block_k=tile)

    def num_splits(self, batch: RaggedBatch, storage, *, head_dim: int) -> int:
        """The decode kernel's split-K factor for this batch's (static) shapes."""
        shape = self._decode_shape(batch, storage, head_dim)
        return choose_num_splits(self.decode_config(batch, storage, head_dim=head_dim),
                                 num_seqs=shape.num_seqs, num_kv_heads=shape.num_kv_heads,
                                 max_kv_len=shape.max_kv_len, num_sms=shape.num_sms)

    # ---- internals ---------------------------------------------------------------------------
    def _decode_shape(self, batch: RaggedBatch, storage, head_dim: int) -> tuned.DecodeShape:
        return tuned.DecodeShape(num_seqs=batch.num_seq_slots, num_kv_heads=storage.num_kv_heads,
                                 max_kv_len=batch.page_table.shape[1] * storage.page_size,
                                 num_sms=self.num_sms or num_sms(), kv_format=storage.kv_format.name,
                                 head_dim=head_dim)

    def _strategy(self) -> PrefillStrategy:
        return AutoPrefill() if self.prefill is None else self.prefill

    def _combination(self, query: jax.ShapeDtypeStruct, storage, options: AttentionOptions) -> Combination:
        return Combination(dtype=query.dtype, head_dim=query.shape[2], page_size=storage.page_size,
                           options=options, interpret=self.interpret, kv_format=storage.kv_format)

    def _plan(self, launches: tuple[Launch, ...], batch: RaggedBatch, storage, options: AttentionOptions,
              query: jax.ShapeDtypeStruct) -> PallasPlan:
        num_tokens, num_q_heads, head_dim = query.shape
        group = num_q_heads // storage.num_kv_heads
        work = launches[0].work(batch, num_tokens=num_tokens, group=group)   # the first launch owns it
        meta = jnp.stack([jnp.int32(0), jnp.asarray(batch.num_seqs, jnp.int32), work.total])
        return PallasPlan(batch=batch, meta=meta, work=work, decode_rows=decode_rows(batch, num_tokens),
                          launches=launches, options=options, query=query, group=group,
                          num_splits=self.num_splits(batch, storage, head_dim=head_dim),
                          num_sms=self.num_sms or num_sms(), interpret=self.interpret)


def check_kernel_format(kv_format, *, head_dim: int, page_size: int, interpret: bool) -> None:
    """Raise a ValueError naming the limit where the kernels cannot read ``kv_format``: each of
    its parts of the head dimension feeds a matrix multiply of at least 16 columns, a format that
    quantizes whole pages (KIVI) is read a page a tile, so its pages hold at least 16 tokens, and
    fp8 elements need an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper)."""
    width = head_dim // kv_format.tile_parts
    if width < 16:
        raise ValueError(f"the Pallas kernels read {kv_format.name} KV in {kv_format.tile_parts} parts of "
                         f"the head dimension, each at least 16 wide: head_dim must be >= "
                         f"{16 * kv_format.tile_parts}, got {head_dim}")
    if kv_format.tile_tokens(16, page_size) < 16:
        raise ValueError(f"the Pallas kernels read {kv_format.name} KV a page a tile (its key scales are per "
                         f"page), and a tile holds at least 16 tokens: group_size (the page size) must be "
                         f">= 16, got {page_size}")
    if isinstance(kv_format, PageGroupFormat):          # integer codes: any GPU
        return
    element = jnp.dtype(kv_format.data_dtype(jnp.bfloat16))
    if element.itemsize == 1 and jnp.issubdtype(element, jnp.floating):
        check_fp8_device(kv_format.name, interpret=interpret)
