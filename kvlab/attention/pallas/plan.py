"""The Pallas backend's per-step plan: what every layer's launches share, computed once per step
inside the jitted step, before the layer scan (FlashInfer's plan/run split).

* ``prefill_plan``: the prefill work list, program -> (sequence, first query token of its block),
  heaviest causal blocks first, for the step's prefill kernel and its block size;
* ``decode_rows``: the row of each sequence slot's decode token (the split-K merge's targets);
* ``PallasPlan``: those arrays, ``meta`` (num_seqs and the work-list length, the slot of the layer
  index filled per layer), and the static choices: the step's launches (``Launch``: which kernels
  run, in order), the split-K factor, the GQA group and the options;
* ``Combination``: what the choice of a step's prefill kernel depends on.

Pure jnp: no Pallas lowering is imported here.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

from kvlab.attention.batch import RaggedBatch
from kvlab.attention.reference import AttentionOptions
from kvlab.kvcache.formats.base import PLAIN, KVFormat


def plan_length(num_tokens: int, num_seqs_padded: int, block_q: int) -> int:
    """Programs a prefill plan needs at most: every query block of the token bucket, plus one
    partial block per sequence slot, which also leaves enough idle programs to zero the padding."""
    return -(-num_tokens // block_q) + num_seqs_padded


def prefill_plan(cu_q_lens, num_seqs, *, block_q: int, num_programs: int, include_decodes: bool):
    """Map program i to (sequence, first query token of its block), heaviest blocks (the last
    blocks of causal sequences) first. Returns (seq [G], q_first [G], num_active []) for
    G = ``num_programs``; single-token sequences are left out unless ``include_decodes``."""
    num_seqs_padded = cu_q_lens.shape[0] - 1
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
    take = (jnp.arange(num_seqs_padded) < num_seqs) & (q_lens > (0 if include_decodes else 1))
    blocks = jnp.where(take, -(-q_lens // block_q), 0)
    ends = jnp.cumsum(blocks)
    total = ends[-1]
    i = jnp.maximum(total - 1 - jnp.arange(num_programs, dtype=jnp.int32), 0)          # heaviest first
    seq = jnp.minimum(jnp.searchsorted(ends, i, side="right"), num_seqs_padded - 1).astype(jnp.int32)
    q_first = ((i - (ends[seq] - blocks[seq])) * block_q).astype(jnp.int32)
    return seq, q_first, total.astype(jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefillWork:
    """A prefill kernel's work list for one step: seq, q_first [G] int32 (program -> sequence and
    first query token of its block), total [] int32 (programs with a block; the rest zero padding)."""

    seq: jax.Array
    q_first: jax.Array
    total: jax.Array

    @classmethod
    def build(cls, batch: RaggedBatch, *, num_tokens: int, block_q: int) -> PrefillWork:
        """The work list of blocks of ``block_q`` query tokens over the sequences of more than one
        query token (``plan_length`` programs)."""
        programs = plan_length(num_tokens, batch.num_seq_slots, block_q)
        seq, q_first, total = prefill_plan(batch.cu_q_lens, batch.num_seqs, block_q=block_q,
                                           num_programs=programs, include_decodes=False)
        return cls(seq=seq, q_first=q_first, total=total)

    @classmethod
    def empty(cls) -> PrefillWork:
        """No prefill work (a step of decodes alone)."""
        none = jnp.zeros((0,), jnp.int32)
        return cls(seq=none, q_first=none, total=jnp.int32(0))


def decode_rows(batch: RaggedBatch, num_tokens: int) -> jax.Array:
    """[S] int32: the row of each sequence slot's single query token, ``num_tokens`` (out of
    range) for slots that are padding or not a decode."""
    cu = batch.cu_q_lens
    valid = jnp.arange(batch.num_seq_slots) < batch.num_seqs
    if not batch.decode_only:
        valid = valid & (cu[1:] - cu[:-1] == 1)
    return jnp.where(valid, cu[:-1], num_tokens).astype(jnp.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Combination:
    """What the choice of a prefill kernel depends on: the query dtype, head_dim, page size, the
    static options, whether kernels run in interpret mode (any device) or compiled, and the
    cache's KV format."""

    dtype: object
    head_dim: int
    page_size: int
    options: AttentionOptions
    interpret: bool
    kv_format: KVFormat = PLAIN


class Launch(Protocol):
    """One kernel launch of a step (frozen, hashable: part of the plan's static data).

    ``work`` runs once per step in ``plan`` (only the step's first launch is asked: the prefill
    kernel, or the fused launch, owns the step's prefill work list); ``__call__`` runs per layer
    and returns the step's output ``[T, Hq, D]``: ``out`` is the output of the launches before
    it (None for the first), ``meta`` [3] int32 is (layer, num_seqs, work-list length).
    """

    def work(self, batch: RaggedBatch, *, num_tokens: int, group: int) -> PrefillWork:
        """The launch's prefill work list for this step (``PrefillWork.empty()`` if none)."""
        ...

    def __call__(self, q: jax.Array, storage, plan: PallasPlan, meta: jax.Array,
                 out: jax.Array | None) -> jax.Array:
        """Run the kernel for one layer (``meta[0]``)."""
        ...


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PallasPlan:
    """Everything the layers of one step share (see the module docstring).

    meta: [3] int32 (0: the layer's slot, num_seqs, ``work.total``); work: the prefill work list;
    decode_rows: [S] int32. Static: launches (run in order), options, query (the shape and dtype
    ``run`` expects), group (query heads per KV head), num_splits (decode split-K factor),
    num_sms, interpret.
    """

    batch: RaggedBatch
    meta: jax.Array
    work: PrefillWork
    decode_rows: jax.Array
    launches: tuple = dataclasses.field(metadata=dict(static=True))
    options: AttentionOptions = dataclasses.field(metadata=dict(static=True))
    query: jax.ShapeDtypeStruct = dataclasses.field(metadata=dict(static=True))
    group: int = dataclasses.field(metadata=dict(static=True))
    num_splits: int = dataclasses.field(metadata=dict(static=True))
    num_sms: int = dataclasses.field(metadata=dict(static=True))
    interpret: bool = dataclasses.field(metadata=dict(static=True))

    def layer_meta(self, layer) -> jax.Array:
        """``meta`` with the layer index in its first slot (what the kernels read)."""
        return self.meta.at[0].set(jnp.asarray(layer, jnp.int32))
