"""ModelRunner: packs a StepPlan into padded arrays and runs the one jitted step.

The step takes the model state, the KV storage (donated: updated in place), the device copy of
the cache's block table, the packed batch and the per-row sampling parameters, and returns the
sampled tokens: one device-to-host transfer per step. The runner reads nothing but the plan: the
plan's ``StepTable`` brings the step's positions, write slots and block-table rows, plus the
table entries written since the last plan, which are the only part of the table that travels to
the device (a small scatter into the device copy; the whole table only after the cache resized
it). Inside the step each row's page-table row is gathered from the device copy.

Shapes come from the scheduler's padding policy (``kvlab.schedulers.shapes``): with
``BucketedShapes`` the number of compilations is bounded by the product of the bucket counts,
times the static batch flags the attention backend keeps (``backend.specialize``); with
``FixedShapes`` every step has one shape and compiles once. ``num_compilations`` counts the
distinct step signatures this runner ran (a public count: a set of shape keys).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np
from flax import nnx

from kvlab.attention.batch import RaggedBatch
from kvlab.engine.device_table import DeviceBlockTable, gather_page_table
from kvlab.engine.sampling import SamplingArrays
from kvlab.schedulers.plan import StepPlan
from kvlab.schedulers.shapes import StepShape, next_pow2


def _step_impl(graphdef, attention, sampler, options, num_page_cols, state, storage, table, cache_rows,
               batch: RaggedBatch, sampling):
    batch = dataclasses.replace(batch, page_table=gather_page_table(table, cache_rows, batch.kv_lens,
                                                                    storage.page_size, num_page_cols))
    model = nnx.merge(graphdef, state)
    logits, storage = model(batch, storage, attention, options)
    return sampler(logits, sampling), storage


# One jitted step shared by every runner: engines over the same model structure, backend, sampler
# and attention options (static, hashable) reuse each other's compilations, e.g. across a sweep.
# The block table's device copy is read, never donated (the next step's scatter makes a new one).
_step = jax.jit(_step_impl, static_argnums=(0, 1, 2, 3, 4), donate_argnums=(6,))


_gather_page_table = jax.jit(gather_page_table, static_argnums=(3, 4))   # ``pack``: outside a step


@jax.jit
def _read_pages(storage, pages):
    return storage.read_pages(pages)


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_pages(storage, pages, data):
    return storage.write_pages(pages, data)


def pack_batch(plan: StepPlan, shape: StepShape) -> tuple[RaggedBatch, np.ndarray]:
    """The host half of a step: the plan as a padded ``RaggedBatch`` (its ``page_table`` left
    None: the step gathers it on the device) and the block-table row of every batch row [rows]."""
    t = plan.table
    n_tok = plan.num_tokens
    row = np.fromiter((s.row for s in plan.seqs), np.int64, len(plan.seqs))
    lens = np.fromiter((s.num_new_tokens for s in plan.seqs), np.int64, len(plan.seqs))
    q_lens = np.zeros(shape.rows, np.int64)
    q_lens[row] = lens
    cu = np.zeros(shape.rows + 1, np.int32)
    cu[1:] = np.cumsum(q_lens)
    kv_lens = np.zeros(shape.rows, np.int32)
    kv_lens[row] = np.fromiter((s.start for s in plan.seqs), np.int64, len(plan.seqs)) + lens
    cache_rows = np.zeros(shape.rows, np.int32)
    cache_rows[row] = t.rows
    logits_idx = np.zeros(shape.rows, np.int32)
    logits_idx[row] = cu[row + 1] - 1
    tokens, positions = np.zeros(shape.tokens, np.int32), np.zeros(shape.tokens, np.int32)
    slots = np.full(shape.tokens, -1, np.int32)
    tokens[:n_tok], positions[:n_tok], slots[:n_tok] = plan.token_ids(), t.positions, t.slots
    batch = RaggedBatch(tokens=tokens, positions=positions, slots=slots, cu_q_lens=cu, kv_lens=kv_lens,
                        page_table=None, num_seqs=np.int32(plan.num_rows), logits_indices=logits_idx,
                        decode_only=bool((lens == 1).all()) and len(lens) == plan.num_rows,
                        has_decodes=bool((lens == 1).any()))
    return batch, cache_rows


class ModelRunner:
    """Runs steps of ``model`` with an attention backend and a sampler.

    shapes: the scheduler's padding policy; limits: the largest step (tokens, rows, page-table
    columns); options: the attention options the step runs with.
    """

    def __init__(self, model, *, attention, sampler, shapes, limits: StepShape, options=None,
                 clock=time.perf_counter):
        self.graphdef, self.state = nnx.split(model)
        self.clock = clock              # times the calls that compile (``compile_seconds``)
        self.attention = attention
        self.options = options or model.attention_options
        self.sampler = sampler
        self.shapes = shapes
        self.limits = limits
        self.table = DeviceBlockTable(num_cols=shapes.pad_limit(limits).pages,
                                      num_rows=next_pow2(2 * limits.rows))
        self._compiled: set[tuple] = set()
        self.compile_seconds = 0.0      # time of the calls that compiled, on ``clock``
        self.steps = 0

    @property
    def num_compilations(self) -> int:
        """Distinct step signatures run so far (each compiled once unless shared)."""
        return len(self._compiled)

    def build_batch(self, plan: StepPlan) -> tuple[RaggedBatch, np.ndarray, StepShape]:
        """Pack ``plan`` at its padded shape, with the static flags the step compiles for."""
        pages = int(plan.table.num_pages.max())
        shape = self.shapes.pad(StepShape(tokens=plan.num_tokens, rows=plan.num_rows, pages=pages),
                                self.limits)
        batch, cache_rows = pack_batch(plan, shape)
        batch = self.attention.specialize(batch)
        decode_only, has_decodes = self.shapes.static_flags(decode_only=batch.decode_only,
                                                            has_decodes=batch.has_decodes)
        return dataclasses.replace(batch, decode_only=decode_only, has_decodes=has_decodes), cache_rows, shape

    # ---- page copies for swapping (page counts padded to powers of two: few compilations) ----
    @staticmethod
    def _padded(pages, fill: int) -> np.ndarray:
        out = np.full(next_pow2(len(pages)), fill, np.int32)
        out[:len(pages)] = pages
        return out

    def read_pages(self, storage, pages) -> np.ndarray:
        """Whole pages as host records [n, L, 2, P, Hkv, D] (one device-to-host transfer)."""
        return np.asarray(_read_pages(storage, self._padded(pages, 0)))[:len(pages)]

    def write_pages(self, storage, pages, data: np.ndarray):
        """Write host records into ``pages`` of the (donated) storage."""
        padded = self._padded(pages, storage.num_pages)         # padding rows are dropped
        full = np.zeros((len(padded),) + data.shape[1:], data.dtype)
        full[:len(pages)] = data
        return _write_pages(storage, padded, full)

    def pack(self, plan: StepPlan) -> tuple[RaggedBatch, StepShape]:
        """The step's whole ``RaggedBatch`` (its page table gathered from the synced device copy
        of the block table, as the step gathers it) and its padded shape."""
        batch, cache_rows, shape = self.build_batch(plan)
        table = self.table.sync(plan.table)
        page_table = _gather_page_table(table, cache_rows, batch.kv_lens, plan.table.page_size, shape.pages)
        return dataclasses.replace(batch, page_table=page_table), shape

    def run(self, plan: StepPlan, storage):
        """Run one step; returns (sampled token ids as a NumPy array [>= plan.num_rows], storage)."""
        batch, cache_rows, shape = self.build_batch(plan)
        table = self.table.sync(plan.table)
        sampling = SamplingArrays.pack(
            shape.rows, [s.row for s in plan.seqs], [s.request.params for s in plan.seqs],
            seeds=[s.request.seed for s in plan.seqs],
            counters=[len(s.request.output_token_ids) for s in plan.seqs])
        key = (shape, batch.decode_only, batch.has_decodes)
        t0 = self.clock()
        tokens, storage = _step(self.graphdef, self.attention, self.sampler, self.options, shape.pages,
                                self.state, storage, table, cache_rows, batch, sampling)
        if key not in self._compiled:    # a new signature: the launch is asynchronous, so this
            self._compiled.add(key)      # call's time is the trace and the compilation
            self.compile_seconds += self.clock() - t0
        self.steps += 1
        return np.asarray(tokens), storage


class DenseReferenceDecoder:
    """The reference: decode one request alone with no cache, a full forward per token
    (``options``: attention options other than the model's, e.g. a window and sinks).

    Lengths are padded to multiples of 64 (causal attention ignores the padding), so the number
    of compilations grows with the length range, not with every length.
    """

    def __init__(self, model, options=None):
        graphdef, self.state = nnx.split(model)

        def logits_at(state, tokens, n):
            return nnx.merge(graphdef, state).dense_logits(tokens, options)[n - 1]

        self._logits_at = jax.jit(logits_at)

    def next_logits(self, token_ids) -> np.ndarray:
        """Logits [V] (float32) after the given tokens."""
        padded = np.zeros(-(-len(token_ids) // 64) * 64, np.int32)
        padded[:len(token_ids)] = token_ids
        return np.asarray(self._logits_at(self.state, padded, np.int32(len(token_ids))))

    def greedy(self, prompt_token_ids, max_tokens: int, eos_token_ids=()) -> list[int]:
        out, generated = list(prompt_token_ids), []
        for _ in range(max_tokens):
            token = int(np.argmax(self.next_logits(out)))
            generated.append(token)
            out.append(token)
            if token in eos_token_ids:
                break
        return generated
