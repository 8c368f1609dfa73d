"""Executors: what runs a ``StepPlan`` for the engine's loop.

The engine's loop is the same whatever executes the plans: ``ModelExecutor`` runs the model on
the device (the KV storage, the host tier's arrays and the jitted step); a simulator
(``kvlab.bench.host_sim.SimulatedExecutor``) charges each plan to a cost model on a simulated
clock and draws random tokens. Both read only the plan.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from kvlab.engine import page_copies
from kvlab.engine.runner import ModelRunner
from kvlab.engine.sampling import Sampled
from kvlab.kvcache.tiers import moves as tier_moves
from kvlab.schedulers.plan import StepPlan
from kvlab.schedulers.shapes import StepShape

COPY_THREADS = 4          # threads for host-to-device transfers of pages


class StepFuture(Protocol):
    """A launched step's outcome: ``result()`` waits for it and returns what it sampled."""

    def result(self) -> Sampled: ...


class Executor(Protocol):
    """Runs plans. ``vocab_size``, ``max_model_len`` and ``eos_token_ids`` describe the model it
    serves; ``num_compilations`` (step signatures run), ``xla_compilations`` (of them, those XLA
    compiled: the others an earlier executor had compiled), ``compile_seconds`` and ``steps``
    count its work."""

    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    num_compilations: int
    xla_compilations: int
    compile_seconds: float
    steps: int

    def launch(self, plan: StepPlan) -> StepFuture:
        """Make the plan's page seals and swap copies and start its step without waiting for it; the future's
        ``result()`` gives what it sampled (tokens [>= num_rows], and log-probabilities when a
        row asked). Steps run in launch order; a plan may hold tokens that the steps launched
        before it sample (``FUTURE_TOKEN``)."""


class Ready:
    """A ``StepFuture`` whose result is already known."""

    def __init__(self, sampled: Sampled):
        self.sampled = sampled

    def result(self) -> Sampled:
        return self.sampled


class ModelExecutor:
    """A model on the device: KV storage from ``cache.init_storage`` (and the host tier's arrays
    when the cache has one), steps through a ``ModelRunner``."""

    def __init__(self, model, cache, *, attention, sampler, shapes, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int, clock=time.perf_counter,
                 xla_options=None):
        c = model.config
        self.vocab_size, self.max_model_len, self.eos_token_ids = c.vocab_size, max_model_len, c.eos_token_ids
        options = cache.attention_options(model.attention_options, max_model_len)
        attention.check(num_q_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
                        page_size=cache.page_size, dtype=model.dtype, kv_format=cache.kv_format)
        self.storage = model.place_kv(cache.init_storage(num_layers=c.num_layers, num_kv_heads=c.num_kv_heads,
                                                         head_dim=c.head_dim, dtype=model.dtype))
        self.host_storage = (None if cache.host_tier is None
                             else cache.host_tier.init_storage(self.storage.page_record))
        if cache.tiers is not None:
            cache.tiers.bind(self.storage.page_record)
        self.tiers = () if cache.tiers is None else cache.tiers.tiers
        self._copy_pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="kvlab-copies")
        limits = StepShape(tokens=max_num_batched_tokens, rows=max_num_seqs,
                           pages=cache.max_table_pages(max_model_len))
        self.runner = ModelRunner(model, attention=attention, sampler=sampler, shapes=shapes,
                                  limits=limits, options=options, clock=clock, xla_options=xla_options)

    @property
    def num_compilations(self) -> int:
        return self.runner.num_compilations

    @property
    def xla_compilations(self) -> int:
        return self.runner.xla_compilations

    @property
    def compile_seconds(self) -> float:
        return self.runner.compile_seconds

    @property
    def steps(self) -> int:
        return self.runner.steps

    def launch(self, plan: StepPlan) -> StepFuture:
        """The plan's page copies, then its step. The step's host work (``runner.prepare``) comes
        first: a load from a tier waits for its last copy, and the step is ready to go when it lands."""
        step = None if plan.is_empty else self.runner.prepare(plan)
        if plan.seals:          # full staging pages, before they are written again or read sealed
            self.storage = page_copies.seal_pages(self.storage, plan.seals)
        self._copy_pages(plan)
        if step is None:
            return Ready(Sampled(np.zeros(0, np.int32)))
        future, self.storage = self.runner.launch(step, self.storage)
        return future

    def _copy_pages(self, plan: StepPlan) -> None:
        """Swaps and tier moves: every page going out is read before any page is written."""
        if plan.swap_out:       # device -> host, before the freed pages are written again
            device, host = zip(*plan.swap_out)
            self.host_storage[list(host)] = page_copies.read_pages(self.storage, device)
        if plan.tier_moves:     # offloads read first, loads written last (tiers.moves)
            tier_moves.make_moves(plan.tier_moves, self.tiers, read_device=self._read_device,
                                  write_device=self._write_device)
        if plan.swap_in:        # host -> device, before the step reads them
            host, device = zip(*plan.swap_in)
            self._write_device(list(device), self.host_storage[list(host)])

    def _read_device(self, pages):
        return page_copies.gather_pages(self.storage, pages)

    def _write_device(self, pages, data, rows=None) -> None:
        self.storage = page_copies.write_pages(self.storage, pages, data, pool=self._copy_pool, rows=rows)
