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
from kvlab.engine.metrics import summarize
from kvlab.engine.runner import ModelRunner
from kvlab.engine.sampling import Sampler
from kvlab.models.tokenizer import IncrementalDecoder
from kvlab.schedulers.continuous import ContinuousScheduler
from kvlab.schedulers.request import Request, SamplingParams


@dataclasses.dataclass
class Completion:
    """A finished request: its tokens, text (when the engine has a tokenizer) and timings."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str | None
    finish_reason: str
    request: Request


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

    model: a ``LlamaModel``; cache: a ``KVCache``; scheduler: a ``Scheduler`` (default
    ``ContinuousScheduler()``); attention: a backend (default: ``PallasAttention()`` on a GPU,
    ``ReferenceAttention()``
    elsewhere; see ``kvlab.attention.select``);
    tokenizer: needed for text prompts, text output and stop strings.
    clock: a zero-argument callable giving seconds, which stamps arrivals and generated tokens
    (default ``time.perf_counter``; a benchmark harness may pass a simulated clock).
    """

    def __init__(self, model, *, cache, scheduler=None, attention=None, sampler=None,
                 tokenizer=None, max_model_len: int | None = None, seed: int = 0, clock=time.perf_counter):
        self.model = model
        self.clock = clock
        self.config = model.config
        self.cache = cache
        self.scheduler = scheduler or ContinuousScheduler()
        self.scheduler.attach(cache)
        self.tokenizer = tokenizer
        self.max_model_len = min(max_model_len or self.config.max_position_embeddings,
                                 self.config.max_position_embeddings)
        self.attention_options = cache.attention_options(model.attention_options, self.max_model_len)
        self.storage = cache.init_storage(num_layers=self.config.num_layers,
                                          num_kv_heads=self.config.num_kv_heads,
                                          head_dim=self.config.head_dim, dtype=model.dtype)
        self.host_storage = None if cache.host_tier is None else cache.host_tier.init_storage(
            num_layers=self.config.num_layers, page_size=cache.page_size,
            num_kv_heads=self.config.num_kv_heads, head_dim=self.config.head_dim, dtype=model.dtype)
        attention = attention or default_attention()
        attention.check(num_q_heads=self.config.num_heads, num_kv_heads=self.config.num_kv_heads,
                        head_dim=self.config.head_dim, page_size=cache.page_size, dtype=model.dtype)
        self.runner = ModelRunner(
            model, attention=attention, sampler=sampler or Sampler(),
            max_num_seqs=self.scheduler.max_num_seqs,
            max_num_batched_tokens=self.scheduler.max_num_batched_tokens,
            max_pages_per_seq=cache.max_table_pages(self.max_model_len),
            options=self.attention_options,
            fixed_shapes=self.scheduler.fixed_shapes, seed=seed, clock=clock)
        self._ids = itertools.count()
        self._decoders: dict[str, IncrementalDecoder] = {}   # unfinished requests only
        self._wanted: set[str] = set()                        # ids whose Completion generate() awaits
        self._done: dict[str, Completion] = {}

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
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.config.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens leaves no room to generate within the "
                             f"model's context of {self.max_model_len} tokens")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        eos = () if self.tokenizer is None else self.tokenizer.eos_token_ids
        request = Request(rid, ids, params, eos_token_ids=eos or self.config.eos_token_ids,
                          max_total_tokens=self.max_model_len, cache_salt=cache_salt, priority=priority,
                          arrival_time=self.clock() if arrival_time is None else arrival_time)
        self.scheduler.add(request)
        if keep_completion:
            self._wanted.add(rid)
        if self.tokenizer is not None:
            self._decoders[rid] = IncrementalDecoder(self.tokenizer)
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
        if plan.is_empty:
            if self.scheduler.has_unfinished():
                raise RuntimeError("the scheduler planned nothing although requests wait; the cache "
                                   "cannot hold the next request")
            return []
        if plan.swap_out:       # device -> host, before the freed pages are written again
            device, host = zip(*plan.swap_out)
            self.host_storage[list(host)] = self.runner.read_pages(self.storage, device)
        if plan.swap_in:        # host -> device, before the step reads them
            host, device = zip(*plan.swap_in)
            self.storage = self.runner.write_pages(self.storage, device, self.host_storage[list(host)])
        tokens, self.storage = self.runner.run(plan, self.cache, self.storage)
        events = []
        for out in self.scheduler.update(plan, tokens, now=self.clock()):
            req = out.request
            if not out.new_token_ids and not out.finished:    # a prefill chunk: nothing to report
                continue
            text = ""
            decoder = self._decoders.get(req.request_id)
            if decoder is not None:
                text = decoder.push(out.new_token_ids)
                hit = self._stop_string(req, decoder)
                if hit is not None:
                    if not req.is_finished:
                        self.scheduler.finish(req.request_id, "stop")
                    emitted = len(decoder.text) - len(text)
                    text = decoder.text[emitted:hit] if hit > emitted else ""
                    decoder.text = decoder.text[:hit]
            events.append(StreamEvent(req.request_id, out.new_token_ids, text, req.is_finished,
                                      req.finish_reason))
            if req.is_finished:
                self._retire(req)
        return events

    def _retire(self, req: Request) -> None:
        """Forget a finished request, keeping its Completion only if generate() waits for it."""
        decoder = self._decoders.pop(req.request_id, None)
        if req.request_id in self._wanted:
            self._done[req.request_id] = Completion(
                req.request_id, req.prompt_token_ids, list(req.output_token_ids),
                decoder.text if decoder else None, req.finish_reason or "", req)

    @staticmethod
    def _stop_string(req: Request, decoder: IncrementalDecoder) -> int | None:
        """Index in the decoded text where the first stop string begins, if any."""
        hits = [i for i in (decoder.text.find(s) for s in req.params.stop) if i >= 0]
        return min(hits) if hits else None

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
        return self.runner.num_compilations

    def metrics(self, completions: list[Completion], wall_seconds: float) -> dict[str, float]:
        """TTFT / ITL / throughput summary of finished completions, plus cache and compile counts."""
        m = summarize([c.request for c in completions], wall_seconds)
        m["compilations"] = float(self.num_compilations)
        m["steps"] = float(self.runner.steps)
        stats = self.cache.stats()
        m["prefix_hit_rate"] = stats.hit_rate
        m["kv_memory_waste"] = stats.memory.waste
        m["evictions"] = float(stats.evictions)
        return m

