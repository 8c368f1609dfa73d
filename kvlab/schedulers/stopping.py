"""When a request ends: every stop condition in one place.

``check_stop(request)`` runs after each sampled token and records ``finish_reason`` ("stop" or
"length") and ``stop_reason`` (the stop token id or stop string that matched; None for EOS and
length), in vLLM's order: once ``min_tokens`` are out, EOS (unless ``ignore_eos``), then a stop
token id, then a stop string that ends in the text of a token after the first ``min_tokens``;
then ``max_tokens``; then the model's context (prompt + output reached ``max_total_tokens``).
Aborts are the scheduler's (``Scheduler.abort``). As in vLLM, the text of a token that ends the
request as EOS or a stop token id is left out of the output text (``token_text_kept``), and a
stop string is cut from it, unless ``include_stop_str_in_output``; the token ids keep them all.

``OutputText`` is a request's detokenized output: text grows by the new tokens only (the
detokenizer is incremental), stop strings are searched only where new text could complete one,
and streamed text holds back the last ``len(longest stop) - 1`` characters until the request
ends, so a stop string is never half streamed: the streamed pieces always add up to the final text.

Examples:
    >>> class Chars:                      # a detokenizer: token t is the character chr(t)
    ...     def __init__(self): self.text = ""
    ...     def push(self, ids): new = "".join(map(chr, ids)); self.text += new; return new
    ...     def flush(self): return ""
    >>> out = OutputText(Chars(), stops=("END",))
    >>> [out.push([t]) or out.take_new(False) for t in b"abcEN"]    # "EN" may start "END"
    ['', '', 'a', 'b', 'c']
    >>> out.push([ord("D")]), out.find_stop(), out.take_new(True), out.text
    (None, 'END', '', 'abc')
"""

from __future__ import annotations

from typing import Protocol


class Detokenizer(Protocol):
    """Incremental detokenizer (``kvlab.models.IncrementalDecoder``): ``push(ids) -> new text``;
    ``text``: all text so far (assignable: a stop string cuts it)."""

    text: str

    def push(self, token_ids) -> str: ...

    def flush(self) -> str:
        """Release held-back text (an incomplete character as U+FFFD)."""


class OutputText:
    """A request's output text, its stop-string search and what has been streamed of it."""

    def __init__(self, decoder: Detokenizer, stops: tuple[str, ...] = (), *, keep_stop: bool = False):
        self.decoder = decoder
        self.stops = stops
        self.keep_stop = keep_stop      # a stop string found stays in the text (include_stop_str_in_output)
        self._holdback = max((len(s) for s in stops), default=1) - 1
        self._searched = 0           # text before this offset holds no stop string
        self._streamed = 0           # characters handed out by take_new

    @property
    def text(self) -> str:
        return self.decoder.text

    def push(self, token_ids) -> None:
        self.decoder.push(token_ids)

    def finish(self) -> None:
        """The request ended (not at a stop string): text held back by the decoder comes out."""
        self.decoder.flush()

    def find_stop(self) -> str | None:
        """The first stop string that ends in the text added since the last search (or
        ``skip_stops``), if any; the text is cut where it begins (after it with ``keep_stop``)."""
        text, searched = self.decoder.text, self._searched
        hits = [(i, s) for s in self.stops if (i := text.find(s, max(0, searched - len(s) + 1))) >= 0]
        self._searched = len(text)
        if not hits:
            return None
        i, s = min(hits)
        self.decoder.text = text[:i + len(s) if self.keep_stop else i]
        return s

    def skip_stops(self) -> None:
        """The text so far may not end the request (``min_tokens`` not reached): later searches
        find only stop strings that end after it."""
        self._searched = len(self.decoder.text)

    def take_new(self, finished: bool) -> str:
        """Text not streamed yet: all of it once finished, else all but the held-back tail."""
        text = self.decoder.text
        end = len(text) if finished else max(self._streamed, len(text) - self._holdback)
        new, self._streamed = text[self._streamed:end], end
        return new


def check_stop(request) -> None:
    """Decide whether ``request`` (a ``Request`` that just got a token) is done; sets
    ``finish_reason`` / ``stop_reason``. See the module docstring for the order."""
    params, out = request.params, request.output_token_ids
    token = out[-1]
    if len(out) >= params.min_tokens:
        if not params.ignore_eos and token in request.eos_token_ids:
            return _finish(request, "stop", None)
        if token in params.stop_token_ids:
            return _finish(request, "stop", token)
    if request.output_text is not None and params.stop:
        if len(out) <= params.min_tokens:       # vLLM: a stop string must end after them
            request.output_text.skip_stops()
        elif (hit := request.output_text.find_stop()) is not None:
            request.finish_reason, request.stop_reason = "stop", hit     # text already cut
            return None
    if len(out) >= params.max_tokens:
        return _finish(request, "length", None)
    if request.max_total_tokens is not None and request.num_tokens >= request.max_total_tokens:
        return _finish(request, "length", None)
    return None


def ending_token_ids(request) -> tuple[int, ...]:
    """The token ids that end ``request`` once ``min_tokens`` are out (and that it may not sample
    before): its stop token ids, and EOS unless ``ignore_eos``."""
    params = request.params
    return tuple(params.stop_token_ids) + (() if params.ignore_eos else tuple(request.eos_token_ids))


def tokens_until_stop(request, tokens: list[int]) -> int:
    """How many of ``tokens`` (sampled in order for ``request``, not yet appended) it takes:
    up to the first that ``check_stop`` would end it at by a stop token id, EOS or length, or all
    of them. Stop strings are not searched (they need the text after each token: ``check_stop``
    token by token does that)."""
    params, out = request.params, len(request.output_token_ids)
    limit = params.max_tokens - out                       # the token that reaches max_tokens
    if request.max_total_tokens is not None:
        limit = min(limit, request.max_total_tokens - request.num_tokens)
    n = min(len(tokens), max(limit, 1))
    stops = ending_token_ids(request)
    if stops:
        for i in range(max(0, params.min_tokens - out - 1), n):     # once min_tokens are out
            if tokens[i] in stops:
                return i + 1
    return n


def token_text_kept(request, token: int, position: int) -> bool:
    """Whether ``token``, output token number ``position`` (1: the first) of ``request``, adds
    its text: not when it ends the request as EOS or a stop token id (vLLM leaves that text out
    unless ``include_stop_str_in_output``; the token id stays in the output either way)."""
    params = request.params
    if params.include_stop_str_in_output or position < params.min_tokens:
        return True
    return token not in ending_token_ids(request)


def _finish(request, finish_reason: str, stop_reason) -> None:
    request.finish_reason = finish_reason
    request.stop_reason = stop_reason
    if request.output_text is not None:
        request.output_text.finish()
