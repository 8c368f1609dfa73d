"""On-device token sampling: greedy, temperature, top-k, top-p, with a random stream per request.

Each row's randomness comes from its request's seed and the index of the token being sampled
(``jax.random.fold_in(jax.random.key(seed), counter)``) and nothing else, so a request draws the
same tokens whatever batch row it sits in, whatever else runs beside it and however the batch is
padded: a seeded request is reproducible across batch sizes, schedulers and preemptions.

Examples:
    >>> import jax.numpy as jnp
    >>> from kvlab import SamplingParams
    >>> arrays = SamplingArrays.pack(4, rows=[2, 0], params=[SamplingParams(temperature=0.8),
    ...                              SamplingParams()], seeds=[7, 0], counters=[5, 0])
    >>> arrays.temperature.tolist(), arrays.seed.tolist()           # rows 1 and 3 are padding
    ([0.0, 0.0, 0.800000011920929, 0.0], [0, 0, 7, 0])
    >>> logits = jnp.array([[0.0, 1.0, 0.0]] * 4)
    >>> tokens = Sampler()(logits, arrays).tokens                    # [4] int32
    >>> tokens[jnp.array([0, 1, 3])].tolist()                       # greedy rows: the argmax
    [1, 1, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.engine.penalties import apply_penalties

_UINT32_LIMIT = 2 ** 32
_INT32_LIMIT = 2 ** 31


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingArrays:
    """Per-row sampling parameters of one step (a JAX pytree).

    temperature: [S] float32, 0 = greedy (exact argmax). top_k: [S] int32, 0 = off. top_p: [S]
    float32 in (0, 1], 1 = off. min_p: [S] float32 in [0, 1], 0 = off. seed: [S] uint32, the
    request's random stream. counter: [S] int32, the index of the token being sampled within its
    request (the number of output tokens it has so far). banned: [S, K] int32 token ids that
    cannot be picked now (-1 = none; EOS and stop ids before ``min_tokens``), or None.
    penalties: the rows' ``RowPenalties`` when some row is penalized, else None. prompt_next:
    [T] int32, for each query token of a request asking prompt log-probabilities, the prompt
    token that follows it (-1: none); ``prompt_logprobs`` (static) its top count, or None.
    Static: ``draws``, whether any row samples (else the argmax alone, no sort); ``logprobs``,
    None (no log-probabilities returned) or k, the top count returned per row.
    """

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seed: jax.Array
    counter: jax.Array
    min_p: jax.Array | None = None
    banned: jax.Array | None = None
    penalties: RowPenalties | None = None
    prompt_next: jax.Array | None = None
    draws: bool = dataclasses.field(default=True, metadata=dict(static=True))
    logprobs: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    prompt_logprobs: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    @classmethod
    def pack(cls, num_rows: int, rows: Sequence[int], params: Sequence, *, seeds: Sequence[int],
             counters: Sequence[int]) -> SamplingArrays:
        """Host-side: NumPy arrays for ``num_rows`` batch rows from per-sequence values.

        rows[i]: the batch row of sequence i; params[i]: its sampling parameters (anything with
        ``temperature``, ``top_k``, ``top_p`` and ``min_p``, e.g. ``SamplingParams``); seeds[i]: its seed in
        [0, 2**32); counters[i]: the index of the token it samples now (>= 0). Rows no sequence
        occupies are padding: greedy, no filters, seed 0, counter 0.
        """
        n = len(rows)
        if not len(params) == len(seeds) == len(counters) == n:
            raise ValueError(f"rows, params, seeds and counters must have one entry per sequence; got "
                             f"{n}, {len(params)}, {len(seeds)} and {len(counters)}")
        row = np.asarray(rows, np.int64).reshape(n)
        if n and (row.min() < 0 or row.max() >= num_rows):
            raise ValueError(f"rows must lie in [0, num_rows={num_rows}), got {sorted(rows)}")
        if len(np.unique(row)) != n:
            raise ValueError(f"each row may hold one sequence; rows {sorted(rows)} repeat one")
        values = np.array([(p.temperature, p.top_k, p.top_p, s, c, p.min_p)
                           for p, s, c in zip(params, seeds, counters)], np.float64).reshape(n, 6)
        temperature, top_k, top_p, seed, counter, min_p = values.T
        for name, column, ok, allowed in (
                ("temperature", temperature, np.isfinite(temperature) & (temperature >= 0),
                 "a finite number >= 0 (0 = greedy)"),
                ("top_k", top_k, (top_k >= 0) & (top_k < _INT32_LIMIT) & (top_k == np.floor(top_k)),
                 "an integer in [0, 2**31) (0 = off)"),
                ("top_p", top_p, (top_p > 0) & (top_p <= 1), "in (0, 1]"),
                ("min_p", min_p, (min_p >= 0) & (min_p <= 1), "in [0, 1]"),
                ("seed", seed, (seed >= 0) & (seed < _UINT32_LIMIT) & (seed == np.floor(seed)),
                 "an integer in [0, 2**32)"),
                ("counter", counter, (counter >= 0) & (counter < _INT32_LIMIT), "an integer in [0, 2**31)")):
            if not ok.all():
                i = int(np.argmin(ok))
                raise ValueError(f"{name} must be {allowed}, got {column[i]} (sequence {i}, row {row[i]})")
        return cls.from_rows(num_rows, row, values)

    @classmethod
    def from_rows(cls, num_rows: int, rows: np.ndarray, values: np.ndarray, *, banned=None,
                  logprobs: int | None = None, penalties: np.ndarray | None = None) -> SamplingArrays:
        """Unchecked ``pack``: ``rows [n]`` distinct ints in [0, num_rows); ``values [n, 5 or 6]``:
        temperature, top_k, top_p, seed, counter (and min_p) per sequence (already valid);
        ``banned [n, K]`` token ids (-1 padding) or None; ``logprobs``: the static top count;
        ``penalties [n, 4]``: repetition, presence, frequency, prompt length, or None."""
        out = np.zeros((6, num_rows), np.float64)
        out[2] = 1.0                                                   # top_p off
        out[:values.shape[1], rows] = values.T
        ban = None
        if banned is not None:
            ban = np.full((num_rows, banned.shape[1]), -1, np.int32)
            ban[rows] = banned
        return cls(temperature=out[0].astype(np.float32), top_k=out[1].astype(np.int32),
                   top_p=out[2].astype(np.float32), seed=out[3].astype(np.uint32),
                   counter=out[4].astype(np.int32), min_p=out[5].astype(np.float32), banned=ban,
                   penalties=None if penalties is None else _row_penalties(num_rows, rows, penalties),
                   draws=bool((out[0] > 0).any()), logprobs=logprobs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RowPenalties:
    """Per row: ``repetition``, ``presence``, ``frequency`` [S] float32 (1, 0, 0 = off),
    ``prompt_len`` [S] int32, ``penalized`` [S] bool; inside the step also the rows' token counts
    ``output [S, V]`` int32 and ``prompt [S, V]`` bool (``kvlab.engine.penalties``)."""

    repetition: jax.Array
    presence: jax.Array
    frequency: jax.Array
    prompt_len: jax.Array
    penalized: jax.Array
    output: jax.Array | None = None
    prompt: jax.Array | None = None


def _row_penalties(num_rows: int, rows: np.ndarray, values: np.ndarray) -> RowPenalties:
    out = np.zeros((4, num_rows), np.float64)
    out[0] = 1.0                                                       # repetition off
    out[:, rows] = values.T
    penalized = np.zeros(num_rows, bool)
    penalized[rows] = (values[:, 0] != 1.0) | (values[:, 1] != 0.0) | (values[:, 2] != 0.0)
    return RowPenalties(repetition=out[0].astype(np.float32), presence=out[1].astype(np.float32),
                        frequency=out[2].astype(np.float32), prompt_len=out[3].astype(np.int32),
                        penalized=penalized)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities of a step's rows (from the raw logits): ``sampled [S]`` float32 of the
    picked token, ``top_ids [S, k]`` int32 and ``top [S, k]`` float32 the k most likely."""

    sampled: jax.Array
    top_ids: jax.Array
    top: jax.Array


def filter_logits(logits, temperature, top_k, top_p, min_p=None):
    """Temperature-scaled logits [S, V] with every token outside the kept set at -inf.

    min_p (0 = off) drops tokens less likely than min_p times the most likely; top_k keeps the k
    largest (0 = all); top_p then keeps the smallest prefix of the descending order whose
    probability mass (after min_p and top-k) reaches top_p, always at least one token. Ties
    with the last kept value are kept.
    """
    vocab = logits.shape[-1]
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]                      # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
    floor = kth
    if min_p is not None:                   # p_i >= min_p * p_max  <=>  s_i >= s_max + log(min_p)
        floor = jnp.maximum(kth, ordered[:, :1] + jnp.log(jnp.maximum(min_p, 1e-30))[:, None])
    probs = jax.nn.softmax(jnp.where(ordered >= floor, ordered, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs                       # mass above each token
    keep = (before < top_p[:, None]) & (ordered >= floor)
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def ban_tokens(logits, banned):
    """``logits [S, V]`` with ``banned [S, K]`` token ids (-1 = none) at -inf."""
    rows = jnp.arange(logits.shape[0])[:, None]
    cols = jnp.where(banned >= 0, banned, logits.shape[1])             # -1 -> out of range: dropped
    return logits.at[rows, cols].set(-jnp.inf, mode="drop")


def token_logprobs(logits, tokens, k: int) -> TokenLogprobs:
    """Log-probabilities (log-softmax of ``logits [S, V]``) of ``tokens [S]`` and the top k."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top, top_ids = jax.lax.top_k(logp, k) if k else (logp[:, :0], jnp.zeros((logp.shape[0], 0), jnp.int32))
    sampled = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return TokenLogprobs(sampled=sampled, top_ids=top_ids.astype(jnp.int32), top=top)


def row_keys(seed, counter):
    """One PRNG key per row: ``fold_in(key(seed[row]), counter[row])`` (seed taken as uint32,
    counter as int32, whatever dtypes they arrive in)."""
    return jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(
        jnp.asarray(seed).astype(jnp.uint32), jnp.asarray(counter).astype(jnp.int32))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sampled:
    """What a step hands back to the host: ``tokens [>= rows]`` int32 and, when some row asked,
    its ``logprobs`` (a ``TokenLogprobs`` of NumPy arrays), else None."""

    tokens: np.ndarray
    logprobs: TokenLogprobs | None = None
    prompt_logprobs: TokenLogprobs | None = None    # [T] rows: the step's query tokens (host only)

    def pack(self):
        """Inside the step: one array for one transfer - ``tokens`` alone, or ``[S, 2 + 2k]``
        float32 (token and top ids bit-cast) with the log-probabilities."""
        if self.logprobs is None:
            return self.tokens
        lp, as_float = self.logprobs, lambda x: jax.lax.bitcast_convert_type(x, jnp.float32)
        return jnp.concatenate([as_float(self.tokens)[:, None], lp.sampled[:, None],
                                as_float(lp.top_ids), lp.top], axis=1)

    @classmethod
    def unpack(cls, packed: np.ndarray) -> Sampled:
        """On the host: the inverse of ``pack`` (NumPy)."""
        if packed.ndim == 1:
            return cls(packed)
        k = (packed.shape[1] - 2) // 2
        ints = packed.view(np.int32)
        return cls(ints[:, 0], TokenLogprobs(sampled=packed[:, 1], top_ids=ints[:, 2:2 + k],
                                             top=packed[:, 2 + k:]))


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Picks one token per row: ``sampler(logits [S, V] float32, params) -> Sampled`` (tokens
    [S] int32, and ``TokenLogprobs`` when asked).

    params: a ``SamplingArrays``, or None when every row is greedy and nothing else is asked:
    then the step is just the argmax (the engine passes None for such steps, so greedy steps
    never pay for sampling). Penalties (``RowPenalties``) apply first, then banned tokens are
    masked (greedy rows too). Rows with
    temperature 0 take the exact argmax; a sampling row draws from softmax(filtered logits /
    temperature) with its own key (``row_keys``), so its token depends on its seed, counter and
    logits row only. Log-probabilities, when asked, come from the raw logits.
    """

    def __call__(self, logits, params: SamplingArrays | None) -> Sampled:
        if params is None:
            return Sampled(jnp.argmax(logits, axis=-1).astype(jnp.int32))
        raw = logits
        if params.penalties is not None:
            p = params.penalties
            logits = apply_penalties(logits, p.output, p.prompt, repetition=p.repetition,
                                     presence=p.presence, frequency=p.frequency)
        if params.banned is not None:
            logits = ban_tokens(logits, params.banned)
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if params.draws:
            temperature = params.temperature
            masked = filter_logits(logits, temperature, params.top_k, params.top_p, params.min_p)
            keys = row_keys(params.seed, params.counter)
            drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, masked)
            tokens = jnp.where(temperature > 0, drawn.astype(jnp.int32), tokens)
        if params.logprobs is None:
            return Sampled(tokens)
        return Sampled(tokens, token_logprobs(raw, tokens, params.logprobs))
