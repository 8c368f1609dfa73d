"""SamplingParams: how a request picks its tokens, what it returns and when it stops (vLLM's
names and meanings, checked when built: a bad value raises a ValueError saying what is allowed).

Examples:
    >>> SamplingParams(temperature=0.7, top_p=0.9, min_p=0.05, seed=1, logprobs=3).sampling
    True
    >>> SamplingParams(temperature=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a finite number >= 0 (0 = greedy), got nan
"""

from __future__ import annotations

import dataclasses
import functools
import math

MAX_LOGPROBS = 20          # top log-probabilities a request may ask for per token (vLLM's default cap)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to pick tokens, what to return and when to stop.

    Picking: ``temperature`` 0 is greedy (the exact argmax); above 0 a token is drawn from the
    softmax of logits / temperature after the filters: ``top_k`` (0 = off) keeps the k most
    likely, ``top_p`` (1 = off) the smallest set reaching that probability mass, ``min_p`` (0 =
    off) drops tokens less likely than min_p times the most likely one. ``seed``: the request's
    own random stream (its draws depend on the seed and the token's index only, not on the batch
    it runs in); None: one derived from the engine's seed and the request. ``n``: independent
    samples of the same prompt (sample j uses seed + j when a seed is given). Penalties, applied
    to the logits before all of that (greedy rows too): ``repetition_penalty`` (1 = off) divides
    positive and multiplies negative logits of tokens seen in the prompt or the output;
    ``presence_penalty`` and ``frequency_penalty`` (0 = off, in [-2, 2]) subtract a constant from
    every token generated so far, and that constant times its count.
    Returning: ``logprobs`` (None = off): the log-probability of each sampled token and of the
    ``logprobs`` most likely tokens at that position (0: the sampled token's alone; at most
    ``MAX_LOGPROBS``), from the model's raw logits (before temperature and filters);
    ``prompt_logprobs`` the same for every prompt token after the first (the request then reuses
    no cached prefix: every prompt token is computed, as vLLM does).
    Stopping: ``max_tokens`` new tokens at most (clamped by the engine to the model's context);
    ``stop`` strings (a string, a list, or None) end generation when they appear in the text;
    ``stop_token_ids`` (or None) end it when one of them is sampled: the id is kept in the
    output's token ids, as EOS is. The output text leaves out the stop string and the text of a
    stop token unless ``include_stop_str_in_output``. Before ``min_tokens`` output tokens, EOS
    (unless ``ignore_eos``) and the stop token ids cannot be sampled at all, and only a stop
    string that ends in the text of a later token ends the request (vLLM's rule).
    ``top_k`` -1 means off, as 0 does (vLLM's older default).
    """

    n: int = 1
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False

    def __post_init__(self):
        _check(_is_int(self.n) and self.n >= 1, "n", "an integer >= 1", self.n)
        _check(_is_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens", "an integer >= 1",
               self.max_tokens)
        _check(_is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_tokens, "min_tokens",
               f"an integer in [0, max_tokens={self.max_tokens}]", self.min_tokens)
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature",
               "a finite number >= 0 (0 = greedy)", self.temperature)
        _check(_is_int(self.top_k) and self.top_k >= -1, "top_k", "an integer >= -1 (0 or -1 = off)",
               self.top_k)
        object.__setattr__(self, "top_k", max(self.top_k, 0))
        _check(_finite(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "in (0, 1] (1 = off)", self.top_p)
        _check(_finite(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1] (0 = off)", self.min_p)
        _check(_finite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
               "a finite number > 0 (1 = off)", self.repetition_penalty)
        for name, value in (("presence_penalty", self.presence_penalty),
                            ("frequency_penalty", self.frequency_penalty)):
            _check(_finite(value) and -2.0 <= value <= 2.0, name, "in [-2, 2] (0 = off)", value)
        _check(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2 ** 32), "seed",
               "None or an integer in [0, 2**32)", self.seed)
        _check(self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
               "logprobs", f"None or an integer in [0, {MAX_LOGPROBS}]", self.logprobs)
        _check(self.prompt_logprobs is None
               or (_is_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= MAX_LOGPROBS),
               "prompt_logprobs", f"None or an integer in [0, {MAX_LOGPROBS}]", self.prompt_logprobs)
        stop = _as_tuple(self.stop, "stop", "None, a string or a list of strings", str)
        _check(all(isinstance(s, str) and s for s in stop), "stop", "non-empty strings", self.stop)
        object.__setattr__(self, "stop", stop)
        ids = _as_tuple(self.stop_token_ids, "stop_token_ids", "None or a list of token ids", int)
        _check(all(_is_int(t) and t >= 0 for t in ids), "stop_token_ids", "token ids >= 0",
               self.stop_token_ids)
        object.__setattr__(self, "stop_token_ids", ids)
        _check(isinstance(self.include_stop_str_in_output, bool), "include_stop_str_in_output",
               "True or False", self.include_stop_str_in_output)
        _check(isinstance(self.ignore_eos, bool), "ignore_eos", "True or False", self.ignore_eos)

    @functools.cached_property
    def plain(self) -> bool:
        """Greedy, with no penalty and no log-probabilities: the step's argmax is all it needs
        (until ``min_tokens``, EOS and stop ids are banned on top)."""
        return (self.temperature == 0 and not self.penalized and self.logprobs is None
                and self.prompt_logprobs is None)

    @property
    def penalized(self) -> bool:
        """Whether a repetition, presence or frequency penalty applies."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn (temperature > 0), not the argmax."""
        return self.temperature > 0

    def with_seed(self, seed: int | None) -> SamplingParams:
        """The same parameters for one of ``n`` samples: n = 1 and the given seed."""
        return dataclasses.replace(self, n=1, seed=seed)


def _as_tuple(value, name: str, allowed: str, single: type) -> tuple:
    """``value`` as a tuple: None is empty, one ``single`` item is a tuple of one."""
    if value is None:
        return ()
    if isinstance(value, single) and not isinstance(value, bool):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be {allowed}, got {value!r}") from None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
