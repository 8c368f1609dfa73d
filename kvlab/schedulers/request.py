"""A request's parameters and lifecycle state (host-side)."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Sequence

from kvlab.schedulers.params import SamplingParams
from kvlab.schedulers.stopping import OutputText, check_stop, token_text_kept, tokens_until_stop

__all__ = ["Request", "RequestStatus", "SamplingParams", "TokenView"]


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"   # preempted by swap: its KV waits in the host tier
    FINISHED = "finished"


@dataclasses.dataclass(eq=False)
class Request:
    """One generation request. ``num_computed_tokens`` counts tokens whose KV is in the cache or
    is being written by a planned step (the scheduler advances it when it plans a step);
    ``num_pending`` counts tokens that planned steps sample but the host has not read yet (an
    engine that plans step N+1 while step N runs has one such token per decoding request)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    max_total_tokens: int | None = None  # the model's context: prompt + output never exceed it
    cache_salt: str | None = None        # prefix-cache namespace
    priority: int = 0                    # larger = more important (scheduling, cache retention)
    queued_step: int = 0                 # scheduler step at which it last entered the waiting queue
    arrival_time: float = dataclasses.field(default_factory=time.perf_counter)
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None     # "stop", "length" or "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    output_text: OutputText | None = None  # detokenized output (engines with a tokenizer)
    seed: int = 0                        # its random stream (``SamplingParams.seed`` or the engine's)
    num_computed_tokens: int = 0
    num_pending: int = 0
    num_preemptions: int = 0
    token_times: list[float] = dataclasses.field(default_factory=list)
    logprobs: list[dict[int, float]] | None = None  # per output token, when params.logprobs is set
    prompt_logprobs: list[dict[int, float] | None] | None = None  # per prompt token (None first)
    _view: TokenView | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    # The properties below run for every request on every step: they read the lists directly
    # rather than through each other.
    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_planned_tokens(self) -> int:
        """Tokens it will have once the planned steps are read: ``num_tokens + num_pending``."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending

    @property
    def ends_by_length(self) -> bool:
        """Whether its pending tokens already reach ``max_tokens`` or the context, so no step
        needs to be planned for it (the last pending token will end it)."""
        pending = self.num_pending
        if pending == 0:
            return False
        outputs = len(self.output_token_ids) + pending
        if outputs >= self.params.max_tokens:
            return True
        limit = self.max_total_tokens
        return limit is not None and len(self.prompt_token_ids) + outputs >= limit

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def tokens(self) -> TokenView:
        """Prompt + output as a live, sliceable view (no copy of the whole sequence; one view is
        kept and handed out again while the two lists are the same objects)."""
        view, prompt, output = self._view, self.prompt_token_ids, self.output_token_ids
        if view is None or view._prompt is not prompt or view._output is not output:
            view = self._view = TokenView(prompt, output)
        return view

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def text(self) -> str | None:
        """The output text so far (None without a tokenizer)."""
        return None if self.output_text is None else self.output_text.text

    def append_token(self, token: int, now: float) -> None:
        """Record a sampled token (a pending one, when steps were planned ahead) and decide
        whether the request is done (``check_stop``)."""
        pending = self.num_pending
        self.num_pending = pending - 1 if pending > 0 else 0
        token = int(token)
        self.output_token_ids.append(token)
        self.token_times.append(now)
        if self.output_text is not None and token_text_kept(self, token, len(self.output_token_ids)):
            self.output_text.push([token])
        check_stop(self)

    def append_tokens(self, tokens: list[int], now: float) -> int:
        """Record tokens sampled in order (a multi-step plan's) until one ends the request;
        returns how many it kept. The same as ``append_token`` on each in turn, with the stop
        checks made once for the block (``tokens_until_stop``) unless stop strings are searched."""
        if not len(tokens):
            return 0
        # Token by token where the request has finished already or any token may complete a
        # stop string (found only in the text after each token).
        if self.finish_reason is not None or (self.output_text is not None and self.params.stop):
            for i, token in enumerate(tokens):
                self.append_token(token, now)
                if self.finish_reason is not None:
                    return i + 1
            return len(tokens)
        kept = [int(t) for t in tokens[:tokens_until_stop(self, tokens)]]
        self.num_pending = max(0, self.num_pending - len(kept))
        self.output_token_ids.extend(kept)
        self.token_times.extend([now] * len(kept))
        if self.output_text is not None:
            # Only the last kept token can end the request (and so lose its text).
            last_kept = token_text_kept(self, kept[-1], len(self.output_token_ids)) if kept else True
            for token in kept if last_kept else kept[:-1]:
                self.output_text.push([token])
        check_stop(self)                # the last kept token: the decision token by token made
        return len(kept)


class TokenView(Sequence):
    """Read-only view of ``prompt + output``; slicing copies only the slice.

    Examples:
        >>> v = TokenView([1, 2, 3], [4, 5])
        >>> len(v), v[2:4], v[-1]
        (5, [3, 4], 5)
    """

    __slots__ = ("_prompt", "_output")

    def __init__(self, prompt: list[int], output: list[int]):
        self._prompt, self._output = prompt, output

    def __len__(self) -> int:
        return len(self._prompt) + len(self._output)

    def __getitem__(self, index):
        n = len(self._prompt)
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if start >= n:
                return self._output[start - n:stop - n]
            if stop <= n:
                return self._prompt[start:stop]
            return self._prompt[start:] + self._output[:stop - n]
        if index < 0:
            index += len(self)
        return self._prompt[index] if index < n else self._output[index - n]
