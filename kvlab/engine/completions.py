"""What the engine hands back: a ``Completion`` per finished request (grouped when
``SamplingParams.n`` > 1), a ``StreamEvent`` per request and step, and the ``CompletionBook``
that keeps the completions someone waits for.

Examples:
    >>> book = CompletionBook()
    >>> book.expect("a", ["a#0", "a#1"])
    >>> book.done("a")
    False
"""

from __future__ import annotations

import dataclasses

from kvlab.engine.metrics import RequestRecord
from kvlab.schedulers.request import Request


@dataclasses.dataclass(repr=False)
class Completion:
    """A finished request: its tokens, text (when the engine has a tokenizer), why it finished
    (``finish_reason``: "stop", "length" or "abort"; ``stop_reason``: the stop token id or stop
    string that matched, None for EOS and length), ``logprobs`` (one ``{token id: log-prob}`` per
    output token, the sampled token first, when ``SamplingParams.logprobs`` was set;
    ``prompt_logprobs`` likewise per prompt token, None for the first) and the
    request with its timings (``metrics``). With ``SamplingParams(n=...)`` above 1, ``samples``
    holds all n completions of the prompt (this one first); otherwise it is empty."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str | None
    finish_reason: str
    request: Request
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None
    samples: list[Completion] = dataclasses.field(default_factory=list)
    prompt_logprobs: list[dict[int, float] | None] | None = None

    @property
    def metrics(self) -> RequestRecord:
        """Its timings: ``ttft``, ``itls``, ``tpot``, ``e2e`` (seconds on the engine's clock)."""
        return RequestRecord.of(self.request)

    def __repr__(self) -> str:
        shown = self.text if self.text is not None else self.token_ids
        shown = repr(shown) if len(repr(shown)) <= 60 else repr(shown)[:57] + "..."
        extra = f", samples={len(self.samples)}" if self.samples else ""
        return (f"Completion({self.request_id!r}, {len(self.token_ids)} tokens, "
                f"finish={self.finish_reason!r}, {shown}{extra})")


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """Progress of one request in one step: new tokens, new text, whether it finished."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None

    @classmethod
    def of(cls, request_id: str, new_token_ids: list[int], new_text: str, finished: bool,
           finish_reason: str | None) -> StreamEvent:
        """``StreamEvent(...)`` without the frozen dataclass ``__init__`` (one per request and step)."""
        event = object.__new__(cls)
        fields = event.__dict__
        fields["request_id"], fields["new_token_ids"] = request_id, new_token_ids
        fields["new_text"], fields["finished"], fields["finish_reason"] = new_text, finished, finish_reason
        return event


class CompletionBook:
    """Completions awaited by id: a request id stands for itself or, with ``n`` > 1, for its
    samples' ids (``expect``); a finished request is recorded only if awaited (``retire``)."""

    def __init__(self):
        self._members: dict[str, list[str]] = {}     # awaited id -> request ids it stands for
        self._owner: dict[str, str] = {}             # request id -> awaited id
        self._finished: dict[str, Completion] = {}

    def __len__(self) -> int:
        """Ids awaited (finished or not)."""
        return len(self._members)

    def expect(self, request_id: str, members: list[str]) -> None:
        self._members[request_id] = list(members)
        for m in members:
            self._owner[m] = request_id

    def forget(self, request_id: str) -> None:
        for m in self._members.pop(request_id, []):
            self._owner.pop(m, None)
            self._finished.pop(m, None)

    def retire(self, req: Request) -> None:
        if req.request_id in self._owner:
            self._finished[req.request_id] = Completion(
                req.request_id, req.prompt_token_ids, list(req.output_token_ids), req.text,
                req.finish_reason or "", req, req.stop_reason, req.logprobs,
                prompt_logprobs=req.prompt_logprobs)

    def done(self, request_id: str) -> bool:
        members = self._members.get(request_id)
        return members is not None and all(m in self._finished for m in members)

    def pop(self, request_id: str) -> Completion | None:
        """The completion of ``request_id`` once all its samples finished (then forgotten)."""
        if not self.done(request_id):
            return None
        members = [self._finished[m] for m in self._members[request_id]]
        self.forget(request_id)
        if len(members) == 1 and members[0].request_id == request_id:
            return members[0]
        return dataclasses.replace(members[0], samples=members)
