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
    >>> tokens = Sampler()(logits, arrays)                           # [4] int32
    >>> tokens[jnp.array([0, 1, 3])].tolist()                       # greedy rows: the argmax
    [1, 1, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_UINT32_LIMIT = 2 ** 32
_INT32_LIMIT = 2 ** 31


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingArrays:
    """Per-row sampling parameters of one step (a JAX pytree; every field is a [S] array).

    temperature: float32, 0 = greedy (exact argmax). top_k: int32, 0 = off. top_p: float32 in
    (0, 1], 1 = off. seed: uint32, the request's random stream. counter: int32, the index of the
    token being sampled within its request (the number of output tokens it has so far).
    """

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seed: jax.Array
    counter: jax.Array

    @classmethod
    def pack(cls, num_rows: int, rows: Sequence[int], params: Sequence, *, seeds: Sequence[int],
             counters: Sequence[int]) -> SamplingArrays:
        """Host-side: NumPy arrays for ``num_rows`` batch rows from per-sequence values.

        rows[i]: the batch row of sequence i; params[i]: its sampling parameters (anything with
        ``temperature``, ``top_k`` and ``top_p``, e.g. ``SamplingParams``); seeds[i]: its seed in
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
        values = np.array([(p.temperature, p.top_k, p.top_p, s, c)
                           for p, s, c in zip(params, seeds, counters)], np.float64).reshape(n, 5)
        temperature, top_k, top_p, seed, counter = values.T
        for name, column, ok, allowed in (
                ("temperature", temperature, temperature >= 0, ">= 0 (0 = greedy)"),
                ("top_k", top_k, (top_k >= 0) & (top_k < _INT32_LIMIT) & (top_k == np.floor(top_k)),
                 "an integer in [0, 2**31) (0 = off)"),
                ("top_p", top_p, (top_p > 0) & (top_p <= 1), "in (0, 1]"),
                ("seed", seed, (seed >= 0) & (seed < _UINT32_LIMIT) & (seed == np.floor(seed)),
                 "an integer in [0, 2**32)"),
                ("counter", counter, (counter >= 0) & (counter < _INT32_LIMIT), "an integer in [0, 2**31)")):
            if not ok.all():
                i = int(np.argmin(ok))
                raise ValueError(f"{name} must be {allowed}, got {column[i]} (sequence {i}, row {row[i]})")
        return cls.from_rows(num_rows, row, values)

    @classmethod
    def from_rows(cls, num_rows: int, rows: np.ndarray, values: np.ndarray) -> SamplingArrays:
        """Unchecked ``pack``: ``rows [n]`` distinct ints in [0, num_rows); ``values [n, 5]``:
        temperature, top_k, top_p, seed, counter per sequence (already valid)."""
        out = np.zeros((5, num_rows), np.float64)
        out[2] = 1.0                                                   # top_p off
        out[:, rows] = values.T
        return cls(temperature=out[0].astype(np.float32), top_k=out[1].astype(np.int32),
                   top_p=out[2].astype(np.float32), seed=out[3].astype(np.uint32),
                   counter=out[4].astype(np.int32))


def filter_logits(logits, temperature, top_k, top_p):
    """Temperature-scaled logits [S, V] with every token outside the top-k / top-p set at -inf.

    top_k keeps the k largest (0 = all); top_p then keeps the smallest prefix of the descending
    order whose probability mass (after top-k) reaches top_p, always at least one token. Ties
    with the last kept value are kept.
    """
    vocab = logits.shape[-1]
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]                      # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
    probs = jax.nn.softmax(jnp.where(ordered >= kth, ordered, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs                       # mass above each token
    keep = (before < top_p[:, None]) & (ordered >= kth)
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def row_keys(seed, counter):
    """One PRNG key per row: ``fold_in(key(seed[row]), counter[row])`` (seed taken as uint32,
    counter as int32, whatever dtypes they arrive in)."""
    return jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(
        jnp.asarray(seed).astype(jnp.uint32), jnp.asarray(counter).astype(jnp.int32))


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Picks one token per row: ``sampler(logits [S, V] float32, params) -> [S] int32``.

    params: a ``SamplingArrays``, or None when every row is greedy: then the step is just the
    argmax (no sort, no draws; the engine passes None for steps without a sampling row, so
    greedy steps never pay for sampling). Rows with temperature 0 take the exact argmax; a
    sampling row draws from softmax(filtered logits / temperature) with its own key
    (``row_keys``), so its token depends on its seed, counter and logits row only.
    """

    def __call__(self, logits, params: SamplingArrays | None):
        greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if params is None:
            return greedy
        temperature = params.temperature
        masked = filter_logits(logits, temperature, params.top_k, params.top_p)
        keys = row_keys(params.seed, params.counter)
        drawn = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, masked)
        return jnp.where(temperature > 0, drawn.astype(jnp.int32), greedy)
