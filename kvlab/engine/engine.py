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

import collections
import dataclasses
import time
from collections.abc import Iterator

from kvlab.attention.select import default_attention
from kvlab.engine.completions import Completion, CompletionBook, StreamEvent
from kvlab.engine.defaults import default_cache
from kvlab.engine.executor import ModelExecutor
from kvlab.engine.intake import Intake, as_prompt_list, params_per_prompt
from kvlab.engine.logprob_records import record_logprobs, record_prompt_logprobs
from kvlab.engine.metrics import RequestRecord, summarize
from kvlab.engine.sample_groups import SampleGroups
from kvlab.engine.sampling import Sampler
from kvlab.engine.xla_options import XlaOptions
from kvlab.schedulers.chunked import ChunkedScheduler
from kvlab.schedulers.request import Request, SamplingParams


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
    steps_ahead: how many steps run on the device while the host plans the next one. 1 (the
    default) overlaps: ``step()`` plans and launches step N+1, then reads step N's tokens, so
    scheduling and packing hide behind the device's work; a token step N samples reaches step
    N+1 on the device, and a request that step N ends has computed one token more, which is
    dropped (its pages are freed after). 0 runs each step to completion before planning the next
    (the serial loop, for debugging); greedy outputs are the same either way.
    xla_options: the XLA compiler options of each step shape (``kvlab.engine.xla_options``;
    default: cuBLAS matmuls for steps of 128 tokens or more on a GPU, XLA's defaults otherwise).
    """

    def __init__(self, model=None, *, cache=None, scheduler=None, attention=None, sampler=None,
                 tokenizer=None, max_model_len: int | None = None, seed: int = 0,
                 clock=time.perf_counter, executor=None, steps_ahead: int = 1,
                 xla_options: XlaOptions | None = None):
        if steps_ahead not in (0, 1):
            raise ValueError(f"steps_ahead must be 0 (serial) or 1 (plan a step while the previous "
                             f"one runs), got {steps_ahead!r}")
        self.steps_ahead = steps_ahead
        self._in_flight: collections.deque = collections.deque()    # (plan, StepFuture), oldest first
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
            cache.bind(self)
            self.scheduler.attach(cache)
            executor = ModelExecutor(
                model, cache, attention=attention or default_attention(), sampler=sampler or Sampler(),
                shapes=self.scheduler.shapes, max_num_seqs=self.scheduler.max_num_seqs,
                max_num_batched_tokens=self.scheduler.max_num_batched_tokens,
                max_model_len=max_model_len, clock=clock, xla_options=xla_options)
        else:
            if cache is None:
                raise TypeError("an engine with an executor needs its cache")
            cache.bind(self)
            self.scheduler.attach(cache)
        self.model, self.cache, self.executor = model, cache, executor
        self.config = None if model is None else model.config
        self.max_model_len = executor.max_model_len
        eos = executor.eos_token_ids
        self.intake = Intake(tokenizer=tokenizer, vocab_size=executor.vocab_size,
                             max_model_len=self.max_model_len, eos_token_ids=eos, seed=seed)
        self.completions = CompletionBook()
        self._live = SampleGroups()                 # request id -> its unfinished samples' ids
        self._aborted: list[StreamEvent] = []       # abort events the next ``step`` hands out
        self.last_run: RunTimes | None = None

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
    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    *, cache_salt: str | None = None, priority: int = 0, arrival_time: float | None = None,
                    keep_completion: bool = False) -> str:
        """Queue a prompt (text or token ids); returns its id. Raises ValueError for bad input;
        nothing else changes. ``max_tokens`` beyond the model's context is clamped (a warning).
        With ``params.n`` > 1 its n samples run as requests ``<id>#<j>``.

        cache_salt: a namespace (tenant, adapter): cached prefixes are shared only between requests
        with the same salt. priority: retention priority of the prefix blocks it leaves behind
        (used by ``PriorityLRU`` eviction). arrival_time: when the request arrived on the engine's
        clock (default: now). keep_completion: keep its ``Completion`` when it finishes, for
        ``pop_completion``."""
        requests = self.intake.requests(
            prompt, params or SamplingParams(), request_id, cache_salt=cache_salt, priority=priority,
            arrival=self.clock() if arrival_time is None else arrival_time)
        added = []
        try:
            for request in requests:
                self.scheduler.add(request)
                added.append(request.request_id)
        except Exception:
            for rid in added:
                self.scheduler.abort(rid)
            raise
        rid = request_id if request_id is not None else requests[0].request_id.split("#")[0]
        self._live.add(rid, added)
        if keep_completion:
            self.completions.expect(rid, added)
        return rid

    def samples(self, request_id: str) -> list[str]:
        """The ids of a live request's unfinished samples (itself, or ``<id>#<j>`` for n > 1);
        [] once it has finished."""
        return self._live.members(request_id)

    def pop_completion(self, request_id: str) -> Completion | None:
        """The ``Completion`` of a request queued with ``keep_completion=True``, once it (all its
        samples) finished, then forgotten; None while it runs."""
        return self.completions.pop(request_id)

    def abort(self, request_id: str) -> None:
        """Abort a queued or running request (all its samples, or one sample ``<id>#<j>``); its
        pages return to the pool at once, and the next ``step`` (or ``stream``) reports each
        sample finished with ``finish_reason`` "abort" and the text not streamed yet. An id that
        finished already, or was never added, is left alone (as vLLM does: an abort may race
        the request's last token)."""
        live = self._live.members(request_id)
        for rid in live or ([request_id] if self._live.group_of(request_id) is not None else []):
            req = self.scheduler.abort(rid)
            text = "" if req.output_text is None else req.output_text.take_new(True)
            self._aborted.append(StreamEvent.of(rid, [], text, True, "abort"))
            self._retire(req)

    def has_unfinished(self) -> bool:
        """Whether a request waits or runs, or a launched step has not been read yet."""
        return self.scheduler.has_unfinished() or bool(self._in_flight)

    def has_pending_events(self) -> bool:
        """Whether ``step`` has events to hand out without running anything (aborts since the
        last ``step``)."""
        return bool(self._aborted)

    # ---- stepping --------------------------------------------------------------------------------
    def step(self) -> list[StreamEvent]:
        """Plan and launch one step, then read the oldest step beyond ``steps_ahead`` (with
        ``steps_ahead=1``: the step launched by the previous call); returns the progress of every
        request that step ran, after the requests aborted since the last call."""
        aborted, self._aborted = self._aborted, []
        return aborted + self._step(events=True)

    def _step(self, events: bool) -> list[StreamEvent]:
        """``step``; without ``events`` (``generate``, which keeps completions) no events are made."""
        plan = self.scheduler.schedule()
        launched = not plan.is_empty or plan.has_page_copies
        if launched:
            self._in_flight.append((plan, self.executor.launch(plan)))
        elif not self._in_flight and self.scheduler.has_unfinished():
            raise RuntimeError("the scheduler planned nothing although requests wait; the cache "
                               "cannot hold the next request")
        progress = []
        while self._in_flight and (len(self._in_flight) > self.steps_ahead or not launched):
            progress += self._read(*self._in_flight.popleft(), events=events)
            launched = True                  # a step with nothing to plan reads one step
        return progress

    def _read(self, plan, future, events: bool) -> list[StreamEvent]:
        """Apply a launched step's tokens; the progress of the requests it ran (none without
        ``events``: finished requests are retired all the same)."""
        sampled = future.result()
        outputs = self.scheduler.update(plan, sampled.tokens, now=self.clock())
        if sampled.logprobs is not None:
            record_logprobs(plan, sampled.logprobs)
        if sampled.prompt_logprobs is not None:
            record_prompt_logprobs(plan, sampled.prompt_logprobs)
        progress, event = [], StreamEvent.of
        for out in outputs:
            req, finished = out.request, out.finished
            if events and (out.new_token_ids or finished):     # a prefill chunk: nothing to report
                text = "" if req.output_text is None else req.output_text.take_new(finished)
                progress.append(event(req.request_id, out.new_token_ids, text, finished, req.finish_reason))
            if finished:
                self._retire(req)
        return progress

    def _retire(self, req: Request) -> None:
        """A request finished: its completion is kept if awaited; it leaves its prompt's samples."""
        self.completions.retire(req)
        self._live.finish(req.request_id)

    def stream(self, prompts, params=None) -> Iterator[StreamEvent]:
        """Queue prompts and yield every request's progress step by step until all finish."""
        self._add_all(prompts, params, keep=False)
        while self.has_unfinished() or self.has_pending_events():
            yield from self.step()

    def _add_all(self, prompts, params, keep: bool) -> list[str]:
        """Queue all prompts, or none: a bad prompt aborts the ones already queued."""
        prompts = as_prompt_list(prompts)
        ids = []
        try:
            for prompt, p in zip(prompts, params_per_prompt(params, len(prompts))):
                ids.append(self.add_request(prompt, p, keep_completion=keep))
        except Exception:
            mark = len(self._aborted)
            for rid in ids:
                self.abort(rid)
                self.completions.forget(rid)
            del self._aborted[mark:]                # never reported: the call raised
            raise
        return ids

    def generate(self, prompts, params=None, progress=None) -> list[Completion]:
        """Generate for prompts - a text, a list of token ids, or a list of either - with one
        ``SamplingParams`` for all or a list of them, one per prompt; results in prompt order.

        progress: an optional callable ``progress(num_finished, num_total)`` called after each step.
        The run's wall time and the compilation time inside it are kept for ``metrics``.
        """
        t0, compile0 = time.perf_counter(), self.executor.compile_seconds
        mark = len(self._aborted)
        ids = self._add_all(prompts, params, keep=True)
        try:
            while self.has_unfinished():
                self._step(events=False)
                if progress is not None:
                    progress(sum(self.completions.done(rid) for rid in ids), len(ids))
            done = [self.completions.pop(rid) for rid in ids]
        finally:
            for rid in ids:
                self.completions.forget(rid)
            del self._aborted[mark:]      # aborts during the call: their completions say it
        self.last_run = RunTimes(wall_seconds=time.perf_counter() - t0,
                                 compile_seconds=self.executor.compile_seconds - compile0)
        return done

    # ---- metrics ---------------------------------------------------------------------------------
    @property
    def num_compilations(self) -> int:
        return self.executor.num_compilations

    def metrics(self, completions: list[Completion], wall_seconds: float | None = None) -> dict[str, float]:
        """TTFT / ITL / throughput summary of finished completions (``kvlab.engine.metrics
        .summarize``; all samples of each), plus cache and compile counts.

        wall_seconds: the time the completions took; default: the last ``generate`` call's own
        measurement, less the compilation inside it (reported apart as ``compile_seconds``, so
        a first call's throughput is not the compiler's)."""
        compile_s = 0.0
        if wall_seconds is None:
            if self.last_run is None:
                raise ValueError("no generate() call measured yet: pass wall_seconds")
            compile_s = self.last_run.compile_seconds
            wall_seconds = self.last_run.wall_seconds - compile_s
        records = [RequestRecord.of(s.request) for c in completions for s in (c.samples or [c])]
        m = summarize(records, wall_seconds)
        m["compile_seconds"] = compile_s
        m["compilations"] = float(self.num_compilations)
        m["steps"] = float(self.executor.steps)
        stats = self.cache.stats()
        m["prefix_hit_rate"] = stats.hit_rate
        m["kv_memory_waste"] = stats.memory.waste
        m["evictions"] = float(stats.evictions)
        return m


@dataclasses.dataclass(frozen=True)
class RunTimes:
    """The wall time of a ``generate`` call and the compilation time inside it (seconds)."""

    wall_seconds: float
    compile_seconds: float
