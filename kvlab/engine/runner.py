"""ModelRunner: packs a StepPlan into one input buffer and launches the one jitted step.

A step is one dispatch with one host-to-device and one device-to-host transfer, and the runner
does not wait for it (``prepare`` packs it, ``launch`` returns a ``StepResult``; its tokens start
travelling to the host at once, and a plan made before they arrive reads them on the device:
``kvlab.engine.future_tokens``). The runner writes the plan's batch (tokens, positions, write
slots, query offsets, KV lengths, block-table rows) and the block-table cells changed since the
previous plan into one int32 buffer (``kvlab.engine.step_inputs``); the jitted step unpacks it,
applies the changes to the device copy of the block table (donated, like the KV storage),
gathers each row's page table, runs the model and samples. The runner reads nothing but the
plan. Steps in which no row samples compile without the sampling path. The weights travel as a
flat list of arrays and the static parts as one hashed ``StepStatics``: dispatching a step costs
the launch, not Python.

Shapes come from the scheduler's padding policy (``kvlab.schedulers.shapes``): with
``BucketedShapes`` the number of compilations is bounded by the product of the bucket counts,
times the static batch flags the attention backend keeps (``backend.specialize``); with
``FixedShapes`` every step has one shape and compiles once. ``num_compilations`` counts the
distinct step signatures this runner ran (a public count: a set of shape keys).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kvlab.attention.batch import RaggedBatch
from kvlab.engine.compile_events import CompileCounter
from kvlab.engine.decode_burst import counted, decode_at
from kvlab.engine.device_table import DeviceBlockTable, apply_changes, gather_page_table
from kvlab.engine.future_tokens import LastTokens, mark_future, record_sampled, resolve_future
from kvlab.engine.penalties import PenaltyCounts, count_step_tokens
from kvlab.engine.plan_sampling import sampling_arrays
from kvlab.engine.sampling import Sampled, token_logprobs
from kvlab.engine.step_inputs import InputLayout, InputViews
from kvlab.engine.xla_options import Options, XlaOptions, default_xla_options
from kvlab.schedulers.plan import StepPlan
from kvlab.schedulers.shapes import StepShape, next_pow2


class StepStatics:
    """The static part of a step: model structure (``graphdef`` and the tree of its state's
    leaves), attention backend, sampler, attention options.

    Hashed once: jit hashes its static arguments on every call, and a model's ``GraphDef``
    hashes in time proportional to the model (tens to hundreds of microseconds a step).
    Equal bundles (the same model structure and parts) share compilations, e.g. across a sweep.
    """

    __slots__ = ("graphdef", "state_tree", "attention", "sampler", "options", "_key", "_hash")

    def __init__(self, graphdef, state_tree, attention, sampler, options):
        self.graphdef, self.state_tree = graphdef, state_tree
        self.attention, self.sampler, self.options = attention, sampler, options
        self._key = (graphdef, state_tree, attention, sampler, options)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (isinstance(other, StepStatics) and self._hash == other._hash
                                 and self._key == other._key)


def _step_impl(statics: StepStatics, spec: StepSpec, weights, storage, table, last, inputs, sampling,
               counts, offset):
    batch, cache_rows, changes = spec.layout.unpack(inputs)
    batch = dataclasses.replace(batch, tokens=resolve_future(batch.tokens, last))
    table = apply_changes(table, changes)
    reach = jnp.where(batch.kv_lens > 0, batch.kv_lens + spec.num_steps - 1, 0)   # the last step's
    page_table = gather_page_table(table, cache_rows, reach, storage.page_size, spec.page_cols)
    batch = dataclasses.replace(batch, page_table=page_table, decode_only=spec.decode_only,
                                has_decodes=spec.has_decodes)
    if offset is not None:                      # step ``offset`` of a multi-step plan
        batch = decode_at(batch, offset, last, cache_rows, storage.page_size)
        sampling = counted(sampling, offset)
    if counts is not None:                      # penalties: count this step's tokens, then read
        p = sampling.penalties
        counts = count_step_tokens(counts, batch, cache_rows, p.prompt_len, p.penalized)
        p = dataclasses.replace(p, output=counts.output[cache_rows], prompt=counts.prompt[cache_rows])
        sampling = dataclasses.replace(sampling, penalties=p)
    model = nnx.merge(statics.graphdef, jax.tree.unflatten(statics.state_tree, weights))
    prompt = None
    if sampling is None or sampling.prompt_logprobs is None:
        logits, storage = model(batch, storage, statics.attention, statics.options)
    else:                                   # logits at every query token: the prompt's log-probs
        every = jnp.arange(batch.tokens.shape[0], dtype=jnp.int32)
        logits, storage = model(dataclasses.replace(batch, logits_indices=every), storage,
                                statics.attention, statics.options)
        following = jnp.maximum(sampling.prompt_next, 0)
        prompt = Sampled(following, token_logprobs(logits, following, sampling.prompt_logprobs)).pack()
        logits = logits[batch.logits_indices]
    sampled = statics.sampler(logits, sampling)
    last = record_sampled(last, cache_rows, batch.kv_lens, sampled.tokens)
    return sampled.pack(), prompt, storage, table, last, counts


@functools.cache
def _jitted_step(xla_options: Options):
    """The jitted step for one set of XLA options, shared by every runner: engines with equal
    statics reuse each other's compilations. The KV storage, the block table's device copy, the
    rows' last tokens and the penalty counts are donated (updated in place)."""
    return jax.jit(_step_impl, static_argnums=(0, 1), donate_argnums=(3, 4, 5, 8),
                   compiler_options=dict(xla_options) or None)


_gather_page_table = jax.jit(gather_page_table, static_argnums=(3, 4))   # ``pack``: outside a step


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What a step compiles for besides the statics: its input layout, page-table columns, the
    batch's static flags and the decode steps it runs (``kvlab.engine.decode_burst``)."""

    layout: InputLayout
    page_cols: int
    decode_only: bool
    has_decodes: bool
    num_steps: int = 1


def fill_inputs(plan: StepPlan, views: InputViews) -> tuple[bool, bool]:
    """The host half of a step: write the plan's batch into ``views`` (its rows padded as the
    layout says); returns the exact (decode_only, has_decodes) flags."""
    t = plan.table
    n_tok = plan.num_tokens
    row, lens = plan.rows, t.num_new_tokens
    q_lens = np.zeros(len(views.kv_lens), np.int64)
    q_lens[row] = lens
    views.cu_q_lens[1:] = np.cumsum(q_lens)
    views.kv_lens[row] = t.starts + lens
    views.cache_rows[row] = t.rows
    views.logits_indices[row] = views.cu_q_lens[row + 1] - 1
    views.tokens[:n_tok] = plan.token_ids()
    mark_future(views.tokens[:n_tok], lens=lens, rows=t.rows)
    views.positions[:n_tok], views.slots[:n_tok] = t.positions, t.slots
    views.num_seqs[0] = plan.num_rows
    decodes = lens == 1
    return bool(decodes.all()) and len(lens) == plan.num_rows, bool(decodes.any())


class PreparedStep(NamedTuple):
    """A plan's step, packed and on its way to the device (``ModelRunner.prepare``): its spec and
    signature key, padded token count, decode steps, input buffer, sampling arrays, penalty
    counts, and the block table and last tokens it starts from."""

    spec: object
    key: tuple
    num_tokens: int
    num_steps: int
    inputs: jax.Array
    sampling: object
    counts: object
    table: jax.Array
    last: jax.Array


class ModelRunner:
    """Runs steps of ``model`` with an attention backend and a sampler.

    shapes: the scheduler's padding policy; limits: the largest step (tokens, rows, page-table
    columns); options: the attention options the step runs with; xla_options: the XLA compiler
    options of each step shape (``kvlab.engine.xla_options``; default ``default_xla_options()``).
    """

    def __init__(self, model, *, attention, sampler, shapes, limits: StepShape, options=None,
                 clock=time.perf_counter, xla_options: XlaOptions | None = None):
        graphdef, self.state = nnx.split(model)
        # The weights travel as a flat list of arrays: flattening an nnx State calls back into
        # Python for every variable, on every step.
        self.weights, state_tree = jax.tree.flatten(self.state)
        self.clock = clock              # times the calls that compile (``compile_seconds``)
        self.attention = attention
        self.options = options or model.attention_options
        self.sampler = sampler
        self.xla_options = xla_options or default_xla_options()
        self.statics = StepStatics(graphdef, state_tree, attention, sampler, self.options)
        self.shapes = shapes
        self.limits = limits
        self.table = DeviceBlockTable(num_cols=shapes.pad_limit(limits).pages,
                                      num_rows=next_pow2(2 * limits.rows),
                                      change_capacity=next_pow2(4 * limits.rows, 64))
        self.last_tokens = LastTokens()
        self.penalty_counts = PenaltyCounts(model.config.vocab_size)
        self._compiled: set[tuple] = set()
        self._offset_scalars: list = []
        self.compile_seconds = 0.0      # time of the calls that compiled, on ``clock``
        self.xla_compilations = 0       # what XLA compiled for them (``kvlab.engine.compile_events``)
        self.steps = 0

    @property
    def num_compilations(self) -> int:
        """Distinct step signatures run so far (each compiled once unless shared)."""
        return len(self._compiled)

    def _prepare(self, plan: StepPlan) -> tuple[InputViews, StepSpec, StepShape]:
        """Fill the step's input buffer for ``plan``; its padded shape and compiled spec."""
        shape = self.shapes.pad(StepShape(tokens=plan.num_tokens, rows=plan.num_rows,
                                          pages=int(plan.table.num_pages.max())), self.limits)
        layout = InputLayout(tokens=shape.tokens, rows=shape.rows, changes=self.table.change_capacity)
        views = layout.allocate()
        decode_only, has_decodes = fill_inputs(plan, views)
        batch, _, _ = layout.unpack(views.buffer)                # NumPy views: the flags alone
        batch = self.attention.specialize(dataclasses.replace(batch, decode_only=decode_only,
                                                              has_decodes=has_decodes))
        decode_only, has_decodes = self.shapes.static_flags(decode_only=batch.decode_only,
                                                            has_decodes=batch.has_decodes)
        return views, StepSpec(layout, shape.pages, decode_only, has_decodes, plan.num_steps), shape

    def pack(self, plan: StepPlan) -> tuple[RaggedBatch, StepShape]:
        """The step's whole ``RaggedBatch`` as the step sees it (its page table gathered from the
        synced device copy of the block table) and its padded shape."""
        views, spec, shape = self._prepare(plan)
        batch, cache_rows, _ = spec.layout.unpack(views.buffer)
        table = self.table.sync(plan.table)
        page_table = _gather_page_table(table, cache_rows, batch.kv_lens, plan.table.page_size, shape.pages)
        return dataclasses.replace(batch, page_table=page_table, decode_only=spec.decode_only,
                                   has_decodes=spec.has_decodes), shape

    def prepare(self, plan: StepPlan) -> PreparedStep:
        """The host's part of a step: the plan packed into the step's input buffer, sent to the
        device, and its block-table changes staged. Nothing here reads the KV storage, so a
        caller may make the plan's page copies between this and ``launch``; one ``launch``
        follows each ``prepare``, in order."""
        views, spec, shape = self._prepare(plan)
        table = self.table.stage(plan.table, views.change_rows, views.change_cols, views.change_pages)
        last = self.last_tokens.fit(self.table.num_rows)
        sampling = sampling_arrays(plan, shape.rows, shape.tokens)
        counts = None
        if sampling is not None and sampling.penalties is not None:
            counts = self.penalty_counts.prepare(plan, self.table.num_rows)
        key = (spec, None if sampling is None else jax.tree.structure(sampling),
               None if sampling is None or sampling.banned is None else sampling.banned.shape,
               None if counts is None else counts.output.shape)
        inputs, sampling = jax.device_put((views.buffer, sampling))    # the step's one transfer in
        return PreparedStep(spec, key, shape.tokens, plan.num_steps, inputs, sampling, counts, table, last)

    def launch(self, step: PreparedStep, storage) -> tuple[StepResult, object]:
        """Launch a prepared step over ``storage`` (donated; a multi-step plan's ``num_steps``
        launches share the inputs, each told its offset: ``kvlab.engine.decode_burst``) without
        waiting; returns (its ``StepResult``, whose ``result()`` gives tokens [>= num_rows], or
        ``num_steps`` blocks of them, and log-probabilities when asked; the storage after it)."""
        t0, fresh = self.clock(), step.key not in self._compiled
        table, last, counts, tokens = step.table, step.last, step.counts, []
        jitted = _jitted_step(tuple(sorted(self.xla_options.for_tokens(step.num_tokens))))
        with CompileCounter() if fresh else contextlib.nullcontext() as compiled:
            for offset in self._offsets(step.num_steps):
                packed, prompt, storage, table, last, counts = jitted(
                    self.statics, step.spec, self.weights, storage, table, last, step.inputs,
                    step.sampling, counts, offset)
                tokens.append(packed)
        self.table.array, self.last_tokens.array = table, last
        if counts is not None:
            self.penalty_counts.counts = counts
        if fresh:                        # a new signature: the launch is asynchronous, so this
            self._compiled.add(step.key)  # call's time is the trace and the compilation
            self.compile_seconds += self.clock() - t0
            self.xla_compilations += compiled.count
        self.steps += 1
        return StepResult(tokens, prompt), storage

    def _offsets(self, num_steps: int) -> list:
        """``[None]`` for one step; else device int32 scalars 0 .. num_steps - 1 (made once and
        kept: a launch passes one without a transfer)."""
        if num_steps == 1:
            return [None]
        while len(self._offset_scalars) < num_steps:
            self._offset_scalars.append(jax.device_put(np.int32(len(self._offset_scalars))))
        return self._offset_scalars[:num_steps]


class StepResult:
    """What a launched step will hand back: its packed sampled tokens (one array per decode step
    of a multi-step plan) and prompt log-probabilities start travelling to the host at once
    (``copy_to_host_async``); ``result()`` waits for them."""

    def __init__(self, packed: list, prompt=None):
        self._arrays = list(packed) + ([] if prompt is None else [prompt])
        self._num_steps = len(packed)
        for array in self._arrays:
            array.copy_to_host_async()

    def result(self) -> Sampled:
        """The step's ``Sampled`` (NumPy), once the device has finished the step: a multi-step
        plan's tokens as one array, step ``j``'s rows at ``[j * S, (j + 1) * S)``."""
        host = jax.device_get(self._arrays)
        k = self._num_steps
        sampled = Sampled.unpack(host[0] if k == 1 else np.concatenate(host[:k]))
        if len(host) > k:
            sampled = dataclasses.replace(sampled, prompt_logprobs=Sampled.unpack(host[k]).logprobs)
        return sampled
