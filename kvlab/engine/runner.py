"""ModelRunner: packs a StepPlan into bucketed arrays and runs the one jitted step.

The step takes the model state, the KV storage (donated: updated in place), the ragged batch and
the per-sequence sampling parameters, and returns the sampled tokens: one device-to-host transfer
per step. Token count, sequence count and pages per sequence are padded to powers of two, so the
number of compilations is bounded by the product of the bucket counts, times two for the
batch's static ``decode_only`` flag (the kernels' decode-only path; ``num_compilations`` counts
the compilations a runner triggered); with ``fixed_shapes`` every step uses the largest buckets
and the mixed path, so the step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np
from flax import nnx

from kvlab.attention.batch import RaggedBatch
from kvlab.schedulers.base import StepPlan


def _step_impl(graphdef, attention, sampler, options, state, storage, batch: RaggedBatch, temperature,
               top_k, top_p, key, step):
    model = nnx.merge(graphdef, state)
    logits, storage = model(batch, storage, attention, options)
    tokens = sampler(logits, temperature, top_k, top_p, jax.random.fold_in(key, step))
    return tokens, storage


# One jitted step shared by every runner: engines over the same model structure, backend, sampler
# and attention options (static, hashable) reuse each other's compilations, e.g. across a sweep.
_step = jax.jit(_step_impl, static_argnums=(0, 1, 2, 3), donate_argnums=(5,))


@jax.jit
def _read_pages(storage, pages):
    return storage.read_pages(pages)


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_pages(storage, pages, data):
    return storage.write_pages(pages, data)


def pow2_buckets(lo: int, hi: int) -> tuple[int, ...]:
    """Powers of two from ``lo`` up to the first one >= ``hi``."""
    out, b = [], max(1, lo)
    while True:
        out.append(b)
        if b >= hi:
            return tuple(out)
        b *= 2


def pick_bucket(buckets: tuple[int, ...], n: int) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


def pack_plan(plan: StepPlan, cache, *, token_buckets, seq_buckets, page_buckets) -> RaggedBatch:
    """The host half of a step: a plan and the cache's page tables as one padded RaggedBatch."""
    seqs = plan.seqs
    pages = [cache.pages(s.request.request_id) for s in seqs]
    return RaggedBatch.build(
        q_tokens=[s.token_ids for s in seqs], q_starts=[s.start for s in seqs], page_lists=pages,
        page_size=cache.page_size, token_bucket=pick_bucket(token_buckets, plan.num_tokens),
        seq_bucket=pick_bucket(seq_buckets, len(seqs)),
        page_bucket=pick_bucket(page_buckets, max(len(p) for p in pages)))


class ModelRunner:
    """Runs steps of ``model`` with an attention backend and a sampler."""

    def __init__(self, model, *, attention, sampler, max_num_seqs: int,
                 max_num_batched_tokens: int, max_pages_per_seq: int, options=None,
                 fixed_shapes: bool = False, seed: int = 0, clock=time.perf_counter):
        self.graphdef, self.state = nnx.split(model)
        self.clock = clock              # times the calls that compile (``compile_seconds``)
        self.attention = attention
        self.options = options or model.attention_options
        self.sampler = sampler
        self.token_buckets = pow2_buckets(16, max_num_batched_tokens)
        self.seq_buckets = pow2_buckets(1, max_num_seqs)
        self.page_buckets = pow2_buckets(1, max_pages_per_seq)
        if fixed_shapes:   # one shape for every step: the largest buckets (persistent batching)
            self.token_buckets, self.seq_buckets, self.page_buckets = (
                self.token_buckets[-1:], self.seq_buckets[-1:], self.page_buckets[-1:])
        self.fixed_shapes = fixed_shapes
        self.num_compilations = 0
        self.compile_seconds = 0.0      # time of the calls that compiled, on ``clock``
        self.key = jax.random.key(seed)
        self.steps = 0

    def build_batch(self, plan: StepPlan, cache) -> RaggedBatch:
        batch = pack_plan(plan, cache, token_buckets=self.token_buckets, seq_buckets=self.seq_buckets,
                          page_buckets=self.page_buckets)
        if self.fixed_shapes:   # one program for every step: decodes take the mixed path too
            batch = dataclasses.replace(batch, decode_only=False)
        if self.fixed_shapes or not getattr(self.attention, "splits_prefill_only_steps", False):
            batch = dataclasses.replace(batch, has_decodes=True)   # one compilation, not one per value
        return batch

    # ---- page copies for swapping (page counts padded to powers of two: few compilations) ----
    @staticmethod
    def _padded(pages, fill: int) -> np.ndarray:
        out = np.full(max(1, 1 << (len(pages) - 1).bit_length()), fill, np.int32)
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

    def run(self, plan: StepPlan, cache, storage):
        """Run one step; returns (sampled token ids as a NumPy array [len(plan.seqs)], storage)."""
        batch = self.build_batch(plan, cache)
        n_slots = batch.num_seq_slots
        temperature = np.zeros(n_slots, np.float32)
        top_k = np.zeros(n_slots, np.int32)
        top_p = np.ones(n_slots, np.float32)
        for i, s in enumerate(plan.seqs):
            p = s.request.params
            temperature[i], top_k[i], top_p[i] = p.temperature, p.top_k, p.top_p
        cached, t0 = _step._cache_size(), self.clock()
        tokens, storage = _step(self.graphdef, self.attention, self.sampler, self.options, self.state,
                                storage, batch, temperature, top_k, top_p, self.key, np.int32(self.steps))
        if _step._cache_size() > cached:      # this call traced a new shape; the launch is asynchronous,
            self.num_compilations += 1        # so its time is the trace and the compilation
            self.compile_seconds += self.clock() - t0
        self.steps += 1
        return np.asarray(tokens)[:len(plan.seqs)], storage


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
