"""Engine: the composition loop of a model, a KV cache, a scheduler, an attention backend and a
sampler. Host bookkeeping (scheduler, cache) runs in Python; each step is one jitted call.

Examples:
    >>> import kvlab
    >>> from kvlab.models import LlamaModel, ModelConfig
    >>> model = LlamaModel(ModelConfig.tiny(), seed=0)
    >>> engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=32, page_size=8),
    ...                       scheduler=kvlab.ContinuousScheduler(max_num_seqs=4))
    >>> [len(c.token_ids) for c in engine.generate([[1, 2, 3], [4, 5]],
    ...                                              kvlab.SamplingParams(max_tokens=3, ignore_eos=True))]
    [3, 3]
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator

from kvlab.attention.select import default_attention
from kvlab.engine.defaults import default_cache
from kvlab.engine.executor import ModelExecutor
from kvlab.engine.metrics import RequestRecord, summarize
from kvlab.engine.sampling import Sampler
from kvlab.models.tokenizer import IncrementalDecoder
from kvlab.schedulers.chunked import ChunkedScheduler
from kvlab.schedulers.request import Request, SamplingParams
from kvlab.schedulers.stopping import OutputText


@dataclasses.dataclass
class Completion:
    """A finished request: its tokens, text (when the engine has a tokenizer), why it finished
    (``finish_reason``: "stop", "length" or "abort"; ``stop_reason``: the stop token id or stop
    string that matched, None for EOS and length) and the request with its timings."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str | None
    finish_reason: str
    request: Request
    stop_reason: int | str | None = None


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """Progress of one request in one step: new tokens, new text, whether it finished."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None


class Engine:
    """Generate with any composition of cache, scheduler, attention backend and sampler.

    model: a ``LlamaModel``; cache: a ``KVCache`` (default: a ``PagedKVCache`` sized from the
    device's free memory, see ``kvlab.engine.defaults``); scheduler: a ``Scheduler`` (default
    ``ChunkedScheduler()``, vLLM's chunked prefill); attention: a backend (default:
    ``PallasAttention()`` on a GPU, ``ReferenceAttention()`` elsewhere; see
    ``kvlab.attention.select``); tokenizer: needed for text prompts, text output and stop strings.
    clock: a zero-argument callable giving seconds, which stamps arrivals and generated tokens
    (default ``time.perf_counter``; a benchmark harness may pass a simulated clock).
    seed: the engine's random stream; a request without ``SamplingParams.seed`` samples from a
    stream derived from it and the request's number.
    executor: instead of a model, what runs the plans (``kvlab.bench.host_sim.SimulatedExecutor``
    for a simulation with no device); the loop is the same.
    """

    def __init__(self, model=None, *, cache=None, scheduler=None, attention=None, sampler=None,
                 tokenizer=None, max_model_len: int | None = None, seed: int = 0,
                 clock=time.perf_counter, executor=None):
        self.clock = clock
        self.scheduler = scheduler or ChunkedScheduler()
        self.tokenizer = tokenizer
        self.seed = seed
        if executor is None:
            if model is None:
                raise TypeError("Engine needs a model (or, for a simulation, an executor)")
            limit = model.config.max_position_embeddings
            max_model_len = min(max_model_len or limit, limit)
            cache = cache or default_cache(model, max_model_len=max_model_len,
                                           max_num_seqs=self.scheduler.max_num_seqs)
            self.scheduler.attach(cache)
            executor = ModelExecutor(
                model, cache, attention=attention or default_attention(), sampler=sampler or Sampler(),
                shapes=self.scheduler.shapes, max_num_seqs=self.scheduler.max_num_seqs,
                max_num_batched_tokens=self.scheduler.max_num_batched_tokens,
                max_model_len=max_model_len, clock=clock)
        else:
            if cache is None:
                raise TypeError("an engine with an executor needs its cache")
            self.scheduler.attach(cache)
        self.model, self.cache, self.executor = model, cache, executor
        self.config = None if model is None else model.config
        self.max_model_len = executor.max_model_len
        self._ids = itertools.count()
        self._wanted: set[str] = set()                        # ids whose Completion generate() awaits
        self._done: dict[str, Completion] = {}

    @property
    def runner(self):
        """The model runner (engines with a model)."""
        return self.executor.runner

    @property
    def attention_options(self):
        """The attention options the step runs with (the model's, with a window a cache imposes)."""
        return self.executor.runner.options

    @property
    def storage(self):
        """The device KV storage pytree (engines with a model)."""
        return self.executor.storage

    # ---- requests --------------------------------------------------------------------------------
    def _tokenize(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer: Engine(..., tokenizer=tok)")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    *, cache_salt: str | None = None, priority: int = 0, arrival_time: float | None = None,
                    keep_completion: bool = False) -> str:
        """Queue a prompt (text or token ids). Raises ValueError for bad input; nothing else changes.

        cache_salt: a namespace (tenant, adapter): cached prefixes are shared only between requests
        with the same salt. priority: retention priority of the prefix blocks it leaves behind
        (used by ``PriorityLRU`` eviction). arrival_time: when the request arrived on the engine's
        clock (default: now). keep_completion: keep its ``Completion`` when it finishes, for
        ``pop_completion``."""
        params = params or SamplingParams()
        ids = self._tokenize(prompt)
        if not ids:
            raise ValueError("empty prompt: at least one token is needed")
        vocab = self.executor.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens leaves no room to generate within the "
                             f"model's context of {self.max_model_len} tokens")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        eos = () if self.tokenizer is None else self.tokenizer.eos_token_ids
        number = next(self._ids)
        rid = request_id if request_id is not None else f"req-{number}"
        request = Request(rid, ids, params, eos_token_ids=eos or self.executor.eos_token_ids,
                          max_total_tokens=self.max_model_len, cache_salt=cache_salt, priority=priority,
                          arrival_time=self.clock() if arrival_time is None else arrival_time,
                          seed=params.seed if params.seed is not None else _derived_seed(self.seed, number))
        if self.tokenizer is not None:
            request.output_text = OutputText(IncrementalDecoder(self.tokenizer), params.stop)
        self.scheduler.add(request)
        if keep_completion:
            self._wanted.add(rid)
        return rid

    def pop_completion(self, request_id: str) -> Completion | None:
        """The ``Completion`` of a request queued with ``keep_completion=True``, once it finished
        (then forgotten); None while it runs."""
        done = self._done.pop(request_id, None)
        if done is not None:
            self._wanted.discard(request_id)
        return done

    def abort(self, request_id: str) -> None:
        """Abort a queued or running request; its pages return to the pool at once."""
        self._retire(self.scheduler.abort(request_id))

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- stepping --------------------------------------------------------------------------------
    def step(self) -> list[StreamEvent]:
        """Schedule and run one step; returns the progress of every request that ran."""
        plan = self.scheduler.schedule()
        if plan.is_empty and not (plan.swap_out or plan.swap_in):
            if self.scheduler.has_unfinished():
                raise RuntimeError("the scheduler planned nothing although requests wait; the cache "
                                   "cannot hold the next request")
            return []
        tokens = self.executor.execute(plan)
        events = []
        for out in self.scheduler.update(plan, tokens, now=self.clock()):
            req = out.request
            if not out.new_token_ids and not out.finished:    # a prefill chunk: nothing to report
                continue
            text = "" if req.output_text is None else req.output_text.take_new(req.is_finished)
            events.append(StreamEvent(req.request_id, out.new_token_ids, text, req.is_finished,
                                      req.finish_reason))
            if req.is_finished:
                self._retire(req)
        return events

    def _retire(self, req: Request) -> None:
        """Forget a finished request, keeping its Completion only if generate() waits for it."""
        if req.request_id in self._wanted:
            self._done[req.request_id] = Completion(
                req.request_id, req.prompt_token_ids, list(req.output_token_ids), req.text,
                req.finish_reason or "", req, req.stop_reason)

    def stream(self, prompts, params: SamplingParams | None = None) -> Iterator[StreamEvent]:
        """Queue prompts and yield every request's progress step by step until all finish."""
        self._add_all(prompts, params)
        while self.has_unfinished():
            yield from self.step()

    def _add_all(self, prompts, params) -> list[str]:
        """Queue all prompts, or none: a bad prompt aborts the ones already queued."""
        ids = []
        try:
            for p in prompts:
                ids.append(self.add_request(p, params))
        except Exception:
            for rid in ids:
                self.abort(rid)
            raise
        return ids

    def generate(self, prompts, params: SamplingParams | None = None, progress=None) -> list[Completion]:
        """Generate for a list of prompts (texts or token-id lists); results in prompt order.

        progress: an optional callable ``progress(num_finished, num_total)`` called after each step.
        """
        ids = self._add_all(prompts, params)
        self._wanted.update(ids)
        try:
            while self.has_unfinished():
                self.step()
                if progress is not None:
                    progress(sum(rid in self._done for rid in ids), len(ids))
            return [self._done.pop(rid) for rid in ids]
        finally:
            self._wanted.difference_update(ids)

    # ---- metrics ---------------------------------------------------------------------------------
    @property
    def num_compilations(self) -> int:
        return self.executor.num_compilations

    def metrics(self, completions: list[Completion], wall_seconds: float) -> dict[str, float]:
        """TTFT / ITL / throughput summary of finished completions (``kvlab.engine.metrics
        .summarize``), plus cache and compile counts."""
        m = summarize([RequestRecord.of(c.request) for c in completions], wall_seconds)
        m["compilations"] = float(self.num_compilations)
        m["steps"] = float(self.executor.steps)
        stats = self.cache.stats()
        m["prefix_hit_rate"] = stats.hit_rate
        m["kv_memory_waste"] = stats.memory.waste
        m["evictions"] = float(stats.evictions)
        return m



def _derived_seed(engine_seed: int, number: int) -> int:
    """A request's own seed from the engine's and its number (a 32-bit mix, no collisions in
    practice between neighbouring numbers)."""
    x = (engine_seed * 0x9E3779B1 + number * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    return x ^ (x >> 12)
