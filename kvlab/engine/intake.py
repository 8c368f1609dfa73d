"""Intake: what the engine does with a prompt before it is a ``Request``.

Tokenizes text, checks the token ids, clamps ``max_tokens`` to the room the model's context leaves
(vLLM's behaviour, with a warning), and expands ``SamplingParams(n=...)`` into n requests that
share the prompt (sample j draws with ``seed + j`` when a seed is given, else its own derived
seed). Bad input raises a ValueError saying what was wrong; nothing is queued.

Examples:
    >>> intake = Intake(tokenizer=None, vocab_size=100, max_model_len=8, eos_token_ids=(2,), seed=0)
    >>> [r.request_id for r in intake.requests([5, 6], SamplingParams(n=2, max_tokens=3), "a", arrival=0.0)]
    ['a#0', 'a#1']
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     intake.requests([5, 6], SamplingParams(max_tokens=100), "b", arrival=0.0)[0].params.max_tokens
    6
    >>> as_prompt_list("hello"), as_prompt_list([1, 2, 3]), as_prompt_list([[1], "hi"])
    (['hello'], [[1, 2, 3]], [[1], 'hi'])
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import warnings

import jax
import numpy as np

from kvlab.models.tokenizer import IncrementalDecoder
from kvlab.schedulers.params import SamplingParams
from kvlab.schedulers.request import Request
from kvlab.schedulers.stopping import OutputText


def as_prompt_list(prompts) -> list:
    """Prompts as a list: a string is one prompt, a sequence of ints is one prompt of token ids,
    anything else is iterated as a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    if _is_id_array(prompts):
        return [prompts]                            # one prompt of token ids
    prompts = list(prompts)
    if prompts and (set(map(type, prompts)) <= {int} or all(_is_token_id(p) for p in prompts)):
        return [prompts]
    return prompts


def _is_token_id(value) -> bool:
    """An integer: Python's, or a NumPy or JAX integer scalar (``operator.index`` takes it); not
    a bool."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_id_array(value) -> bool:
    """Whether ``value`` is a 1-D integer array (NumPy or JAX): one prompt of token ids."""
    return isinstance(value, np.ndarray | jax.Array) and value.ndim == 1 and value.dtype.kind in "iu"


def _token_ids(prompt) -> list[int]:
    """``prompt`` as a list of ints, else a ValueError naming what a prompt is."""
    if _is_id_array(prompt):
        return np.asarray(prompt).tolist()          # an integer array: no element-wise checks
    try:
        items = list(prompt)
    except TypeError:
        items = None
    if items is not None and set(map(type, items)) <= {int}:   # the common case, checked at C speed
        return items
    if items is None or not all(_is_token_id(t) for t in items):
        raise ValueError(f"a prompt is a string or a list of token ids (integers); got "
                         f"{type(prompt).__name__} {str(prompt)[:60]}")
    return [operator.index(t) for t in items]


def params_per_prompt(params, num_prompts: int) -> list[SamplingParams]:
    """One ``SamplingParams`` per prompt from one (shared), a list (one each) or None (defaults)."""
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * num_prompts
    params = list(params)
    if len(params) != num_prompts:
        raise ValueError(f"got {len(params)} SamplingParams for {num_prompts} prompts: give one "
                         f"for all, or one per prompt")
    bad = [type(p).__name__ for p in params if not isinstance(p, SamplingParams)]
    if bad:
        raise TypeError(f"params must be SamplingParams, got {bad[0]}")
    return params


class Intake:
    """Builds requests for one engine: its tokenizer (or None: token ids only), vocabulary size,
    context length, EOS ids and random seed."""

    def __init__(self, *, tokenizer, vocab_size: int, max_model_len: int, eos_token_ids, seed: int):
        self.tokenizer, self.vocab_size, self.max_model_len = tokenizer, vocab_size, max_model_len
        self.eos_token_ids = tuple(eos_token_ids)
        self.seed = seed
        self._numbers = itertools.count()

    def tokenize(self, prompt) -> list[int]:
        """Token ids of a prompt (text needs a tokenizer), checked against the vocabulary."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer: Engine(..., tokenizer=tok), or pass "
                                 "token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = _token_ids(prompt)
        if not ids:
            raise ValueError("empty prompt: at least one token is needed")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens leaves no room to generate within the "
                             f"model's context of {self.max_model_len} tokens")
        return ids

    def requests(self, prompt, params: SamplingParams, request_id: str | None, *, arrival: float,
                 cache_salt: str | None = None, priority: int = 0) -> list[Request]:
        """The requests for one prompt: one, or ``params.n`` with ids ``<id>#<j>``."""
        ids = self.tokenize(prompt)
        params = self._clamped(params, len(ids))
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        bad = [t for t in params.stop_token_ids if t >= self.vocab_size]
        if bad:
            raise ValueError(f"stop_token_ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        number = next(self._numbers)
        rid = request_id if request_id is not None else f"req-{number}"
        names = [rid] if params.n == 1 else [f"{rid}#{j}" for j in range(params.n)]
        out = []
        for j, name in enumerate(names):
            seed = (_derived_seed(self.seed, number, j) if params.seed is None
                    else (params.seed + j) % 2 ** 32)
            salt = cache_salt
            if params.prompt_logprobs is not None:   # every prompt token computed: no cached prefix
                salt = f"{cache_salt or ''}\x00prompt-logprobs:{name}:{number}"
            out.append(self._request(name, ids, params.with_seed(seed), arrival, salt, priority))
        return out

    def _request(self, rid, ids, params, arrival, cache_salt, priority) -> Request:
        eos = self.tokenizer.eos_token_ids if self.tokenizer is not None else ()
        request = Request(rid, ids, params, eos_token_ids=tuple(eos) or self.eos_token_ids,
                          max_total_tokens=self.max_model_len, cache_salt=cache_salt, priority=priority,
                          arrival_time=arrival, seed=params.seed)
        if self.tokenizer is not None:
            request.output_text = OutputText(IncrementalDecoder(self.tokenizer), params.stop,
                                             keep_stop=params.include_stop_str_in_output)
        if params.logprobs is not None:
            request.logprobs = []
        if params.prompt_logprobs is not None:
            request.prompt_logprobs = [None] * len(ids)
        return request

    def _clamped(self, params: SamplingParams, prompt_len: int) -> SamplingParams:
        room = self.max_model_len - prompt_len
        if params.max_tokens <= room:
            return params
        warnings.warn(f"max_tokens={params.max_tokens} does not fit the model's context of "
                      f"{self.max_model_len} tokens after a {prompt_len}-token prompt; clamped to "
                      f"{room}", stacklevel=4)
        return dataclasses.replace(params, max_tokens=room, min_tokens=min(params.min_tokens, room))


def _derived_seed(engine_seed: int, number: int, sample: int = 0) -> int:
    """A request's own seed from the engine's, its number and its sample index (a 32-bit mix, no
    collisions in practice between neighbours)."""
    x = (engine_seed * 0x9E3779B1 + number * 0x85EBCA77 + sample * 0xC2B2AE3D + 0x165667B1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    return x ^ (x >> 12)
