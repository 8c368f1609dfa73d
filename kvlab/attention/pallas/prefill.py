"""Prefill strategies: which prefill kernel serves a step, and how a step with prefill chunks is
launched.

``PallasAttention(prefill=...)`` takes a strategy (``PrefillStrategy``):

* ``PrefillConfig``: the Triton kernel, with its tiles (any GPU, every combination);
* ``MosaicPrefillConfig`` (``hopper.py``): the Hopper kernel, with its tiles; raises,
  naming the limit, where it cannot serve;
* ``AutoPrefill`` (what ``prefill=None`` means): the Hopper kernel on a Hopper GPU where it serves
  the combination and the step has no decodes to fuse with, the Triton kernel otherwise.

The two kernel configs are also ``PrefillKernel``s: a launch of the step (``plan.Launch``) that
builds its work list once per step (blocks of ``block_q`` query tokens) and writes its rows per
layer. The backend calls these methods; it never tests which strategy it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.pallas.config import check_pow2, next_pow2
from kvlab.attention.pallas.device import is_hopper
from kvlab.attention.pallas.hopper import MosaicPrefillConfig, unsupported_reason
from kvlab.attention.pallas.launches import DecodeLaunch, FusedLaunch
from kvlab.attention.pallas.layout import as_rows
from kvlab.attention.pallas.plan import Combination, Launch, PallasPlan, PrefillWork


class PrefillStrategy(Protocol):
    """How ``PallasAttention`` runs the prefill chunks of a step (see the module docstring)."""

    def resolve(self, combination: Combination) -> PrefillKernel:
        """The kernel that serves ``combination``; a ValueError naming the limit if none does."""
        ...

    def launches(self, combination: Combination, decode: DecodeLaunch, *, has_decodes: bool,
                 fuse_mixed: bool) -> tuple[Launch, ...]:
        """The launches, in order, of a step with prefill chunks (and decodes if ``has_decodes``);
        ``decode`` is the decode kernel's launch, ``fuse_mixed`` the backend's preference for one
        launch holding prefill and decode programs where the kernel can fuse them."""
        ...

    def specialize(self, batch: RaggedBatch, *, interpret: bool) -> RaggedBatch:
        """``batch`` with ``has_decodes`` fixed (True) unless this strategy launches different
        kernels for steps with and without decodes."""
        ...


class PrefillKernel(PrefillStrategy, Launch, Protocol):
    """A concrete prefill kernel with its tiles (``PrefillConfig``, ``MosaicPrefillConfig``): a
    strategy that forces itself, and a step launch writing the rows of the sequences of more than
    one query token (padding rows zeros, decode rows left unwritten) from its work list."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefillConfig:
    """The Triton prefill kernel: ``block_m`` rows (query tokens x the heads of one KV group) per
    program, KV tiles of ``block_k`` tokens; fully masked tiles are skipped. It serves every
    combination and fuses with the decode programs into one launch (``fuse_mixed``).

    Examples:
        >>> PrefillConfig().block_q(group=4), PrefillConfig(block_m=64).block_q(group=3)
        (32, 16)
    """

    block_m: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        check_pow2("block_m", self.block_m, 16)
        check_pow2("block_k", self.block_k, 16)

    def block_q(self, group: int) -> int:
        """Query tokens per program: ``block_m`` rows over the group's (padded) heads."""
        return max(1, self.block_m // next_pow2(group))

    def resolve(self, combination: Combination) -> PrefillConfig:
        """Serves every combination."""
        return self

    def launches(self, combination: Combination, decode: DecodeLaunch, *, has_decodes: bool,
                 fuse_mixed: bool) -> tuple[Launch, ...]:
        """One fused launch (``fuse_mixed``), or this kernel then the decode kernel in place."""
        return (FusedLaunch(prefill=self, decode=decode),) if fuse_mixed else (self, decode)

    def specialize(self, batch: RaggedBatch, *, interpret: bool) -> RaggedBatch:
        """The same launches with or without decodes: ``has_decodes`` fixed."""
        return dataclasses.replace(batch, has_decodes=True)

    def work(self, batch: RaggedBatch, *, num_tokens: int, group: int) -> PrefillWork:
        """Blocks of ``block_q(group)`` query tokens, heaviest first."""
        return PrefillWork.build(batch, num_tokens=num_tokens, block_q=self.block_q(group))

    def __call__(self, q: jax.Array, storage, plan: PallasPlan, meta: jax.Array,
                 out: jax.Array | None) -> jax.Array:
        """The prefill rows of one layer (the step's first launch: ``out`` is None)."""
        from kvlab.attention.pallas import triton_calls
        b = plan.batch
        return triton_calls.ragged_prefill(q, as_rows(storage.arrays), b.cu_q_lens, b.kv_lens, b.page_table,
                                           meta, plan.work, st=triton_calls.static_for(self, storage, plan),
                                           config=self)


@dataclasses.dataclass(frozen=True)
class AutoPrefill:
    """The Hopper kernel where it serves and pays, the Triton kernel elsewhere (``prefill=None``).

    A step with decodes takes the fused Triton launch (with ``fuse_mixed``: measured 3% faster
    than its parts, where the Hopper prefill plus a decode launch was 7% slower); a step of
    prefills alone takes the Hopper kernel alone on a Hopper GPU wherever
    ``hopper.unsupported_reason`` finds nothing, compiled (never in interpret mode).
    """

    def resolve(self, combination: Combination) -> PrefillKernel:
        """``MosaicPrefillConfig()`` on a Hopper GPU where it serves, else ``PrefillConfig()``."""
        c = combination
        why = unsupported_reason(dtype=c.dtype, head_dim=c.head_dim, page_size=c.page_size, options=c.options,
                                 kv_format=c.kv_format)
        hopper = why is None and not c.interpret and is_hopper()
        return MosaicPrefillConfig() if hopper else PrefillConfig()

    def launches(self, combination: Combination, decode: DecodeLaunch, *, has_decodes: bool,
                 fuse_mixed: bool) -> tuple[Launch, ...]:
        """Decodes too and ``fuse_mixed``: the fused Triton launch; else the resolved kernel's."""
        kernel = PrefillConfig() if has_decodes and fuse_mixed else self.resolve(combination)
        return kernel.launches(combination, decode, has_decodes=has_decodes, fuse_mixed=fuse_mixed)

    def specialize(self, batch: RaggedBatch, *, interpret: bool) -> RaggedBatch:
        """``has_decodes`` kept exact where the Hopper kernel may run (compiled, on a Hopper GPU)."""
        if not interpret and is_hopper():
            return batch
        return dataclasses.replace(batch, has_decodes=True)
