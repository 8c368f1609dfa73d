"""The Hopper prefill kernel as a strategy: its tiles, what it serves, its work list and its launch.

The kernel itself (``mosaic_prefill.py``, Pallas with the Mosaic GPU lowering) is imported only
when a step launches it, so importing kvlab loads no Mosaic GPU module.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.pallas.config import COMPUTE_WGS
from kvlab.attention.pallas.device import is_hopper
from kvlab.attention.pallas.launches import DecodeLaunch
from kvlab.attention.pallas.plan import Combination, Launch, PallasPlan, PrefillWork
from kvlab.kvcache.formats.base import PLAIN, KVFormat


def unsupported_reason(*, dtype, head_dim: int, page_size: int, options,
                       kv_format: KVFormat = PLAIN) -> str | None:
    """Why the Hopper kernel cannot serve the combination (None when it can).

    Examples:
        >>> from kvlab.attention import AttentionOptions
        >>> unsupported_reason(dtype=jnp.float32, head_dim=128, page_size=16,
        ...                    options=AttentionOptions(sm_scale=1.0))
        'the Mosaic GPU prefill takes bfloat16 or float16, not float32'
    """
    if kv_format != PLAIN:
        return f"the Mosaic GPU prefill reads plain KV, not {kv_format.name} (the Triton prefill reads it)"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"the Mosaic GPU prefill takes bfloat16 or float16, not {jnp.dtype(dtype).name}"
    if head_dim not in (64, 128):
        return f"the Mosaic GPU prefill takes head_dim 64 or 128, not {head_dim}"
    if page_size < 8 or page_size & (page_size - 1):
        return f"the Mosaic GPU prefill takes page sizes that are powers of two >= 8, not {page_size}"
    if options.sliding_window is not None or options.num_sink_tokens:
        return "the Mosaic GPU prefill has no sliding window or attention sinks"
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicPrefillConfig:
    """Tiles of the Hopper prefill kernel: ``block_q`` query tokens per compute warpgroup (two per
    CTA), KV tiles of ``block_kv`` tokens in a ring of ``stages`` slots.

    ``persistent``: one CTA per SM looping over the work items (True), or one CTA per work item,
    balanced by the hardware's block scheduler (False). The grid is sized for the worst case of
    the static shapes (every sequence slot a prefill), so with many sequence slots per query block
    most CTAs would be idle and launch for nothing; None chooses persistent exactly then (more
    sequence slots than query blocks of the token bucket).

    As a strategy it forces this kernel: ``resolve`` raises, naming the limit, where it cannot
    serve (``unsupported_reason``, or no Hopper GPU outside interpret mode). It cannot fuse with
    the decode programs: a step with decodes runs it, then the decode kernel in place.
    """

    block_q: int = 64
    block_kv: int = 128
    stages: int = 2
    persistent: bool | None = None

    def __post_init__(self):
        if self.block_q != 64:
            raise ValueError(f"block_q must be 64 (one wgmma M tile per warpgroup), got {self.block_q}")
        if self.block_kv % 64 or self.block_kv & (self.block_kv - 1):
            raise ValueError(f"block_kv must be a power of two and a multiple of 64, got {self.block_kv}")
        if self.stages < 2:
            raise ValueError(f"stages must be >= 2, got {self.stages}")

    @property
    def cta_rows(self) -> int:
        """Query tokens per CTA (one work item): the two compute warpgroups' blocks."""
        return COMPUTE_WGS * self.block_q

    def resolve(self, combination: Combination) -> MosaicPrefillConfig:
        """This kernel, or a ValueError naming why it cannot serve ``combination``."""
        c = combination
        why = unsupported_reason(dtype=c.dtype, head_dim=c.head_dim, page_size=c.page_size, options=c.options,
                                 kv_format=c.kv_format)
        if why is None and not (c.interpret or is_hopper()):
            why = ("the Mosaic GPU prefill needs a Hopper GPU (compute capability 9.x), not "
                   f"{jax.devices()[0]}")
        if why is not None:
            raise ValueError(f"{why}; pass prefill=PrefillConfig() for the Triton kernel, or "
                             "prefill=None to choose per combination")
        return self

    def launches(self, combination: Combination, decode: DecodeLaunch, *, has_decodes: bool,
                 fuse_mixed: bool) -> tuple[Launch, ...]:
        """This kernel, then the decode kernel in place if the step has decodes (no fusing)."""
        kernel = self.resolve(combination)
        return (kernel, decode) if has_decodes else (kernel,)

    def specialize(self, batch: RaggedBatch, *, interpret: bool) -> RaggedBatch:
        """A step without decodes launches no decode kernel: ``has_decodes`` kept exact."""
        return batch

    def work(self, batch: RaggedBatch, *, num_tokens: int, group: int) -> PrefillWork:
        """Blocks of ``cta_rows`` query tokens (a CTA's rows, one query head: any group), heaviest
        first."""
        return PrefillWork.build(batch, num_tokens=num_tokens, block_q=self.cta_rows)

    def __call__(self, q: jax.Array, storage, plan: PallasPlan, meta: jax.Array,
                 out: jax.Array | None) -> jax.Array:
        """The prefill rows of one layer (the step's first launch: ``out`` is None)."""
        from kvlab.attention.pallas import mosaic_prefill  # the Mosaic GPU lowering, on first use
        b, layout = plan.batch, storage.layout
        num_ctas = 2 if plan.interpret else plan.num_sms        # interpret: 2, several items a CTA
        return mosaic_prefill.ragged_prefill(
            q, layout.tma_arrays(storage.arrays), b.cu_q_lens, b.kv_lens, b.page_table, meta,
            (plan.work.seq, plan.work.q_first), layout=layout, options=plan.options, config=self,
            interpret=plan.interpret, num_ctas=num_ctas)
