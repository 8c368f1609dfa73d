"""The model's projections that read the same input, kept as one weight each: q, k and v as
``w_qkv`` (and ``b_qkv``), gate and up as ``w_gate_up``. One matmul of the concatenated weight
does the work of two or three; at small row counts the separate ones are launch- and tile-bound
(on the lent H200, Llama-3.2-1B shape, bf16, batch 256, the decode step's matmuls took 1.19 ms
fused against 1.51 ms separate, and the step 2.60 against 2.85 ms; 2026-12-02).

A fused weight is laid out in ``parts`` column blocks, block ``s`` holding the ``s``-th share of
each member's columns in order: split over ``parts`` devices by columns, every device holds its
own heads' q, k and v (and its share of gate and up) side by side. With ``parts = 1`` it is the
plain concatenation.

Checkpoints, loaders and ``LlamaModel.host_weights`` speak of the separate weights
(``weight_shapes``); ``fuse`` and ``unfuse`` convert.

Examples:
    >>> import numpy as np
    >>> w = {"wq": np.array([[1, 2, 3, 4]]), "wk": np.array([[5, 6]]), "wv": np.array([[7, 8]])}
    >>> fuse(w, parts=2)["w_qkv"].tolist()
    [[1, 2, 5, 7, 3, 4, 6, 8]]
    >>> {n: a.tolist() for n, a in unfuse(fuse(w, parts=2), {"wq": 4, "wk": 2, "wv": 2}, parts=2).items()}
    {'wq': [[1, 2, 3, 4]], 'wk': [[5, 6]], 'wv': [[7, 8]]}
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FUSED = {"w_qkv": ("wq", "wk", "wv"), "b_qkv": ("bq", "bk", "bv"), "w_gate_up": ("w_gate", "w_up")}
"""Each fused weight and its members, in column order."""


def _module(arrays) -> Any:
    """NumPy for host arrays (a weight kept in host memory stays there), jax.numpy otherwise."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def fuse(weights: dict[str, Any], parts: int) -> dict[str, Any]:
    """Separate projection weights (``[..., out]`` each) -> fused ones (``[..., sum(out)]``) in
    ``parts`` column blocks; other weights pass as they are. A group absent from ``weights``
    (biases of a model without them) is skipped."""
    out = dict(weights)
    for fused, members in FUSED.items():
        if members[0] not in out:
            continue
        arrays = [out.pop(m) for m in members]
        xp = _module(arrays)
        for name, a in zip(members, arrays, strict=True):
            if a.shape[-1] % parts:
                raise ValueError(f"{name} has {a.shape[-1]} output columns, which do not split in "
                                 f"{parts} parts")
        blocks = [xp.reshape(a, (*a.shape[:-1], parts, a.shape[-1] // parts)) for a in arrays]
        joined = xp.concatenate(blocks, axis=-1)
        out[fused] = xp.reshape(joined, (*joined.shape[:-2], -1))
    return out


def split_columns(x: jax.Array, widths: tuple[int, ...], parts: int) -> list[jax.Array]:
    """``x [..., sum(widths)]`` laid out in ``parts`` column blocks -> one array per member,
    ``[..., widths[i]]`` each, in its own column order."""
    blocked = x.reshape(*x.shape[:-1], parts, -1)
    cuts = np.cumsum([w // parts for w in widths])[:-1].tolist()
    return [p.reshape(*x.shape[:-1], -1) for p in jnp.split(blocked, cuts, axis=-1)]


def unfuse(weights: dict[str, Any], widths: dict[str, int], parts: int) -> dict[str, np.ndarray]:
    """``fuse``'s inverse in host memory; ``widths``: each member's number of output columns."""
    out = {}
    for name, w in weights.items():
        members = FUSED.get(name)
        if members is None:
            out[name] = np.asarray(w)
            continue
        blocked = np.asarray(w).reshape(*w.shape[:-1], parts, -1)
        cuts = np.cumsum([widths[m] // parts for m in members])[:-1]
        for member, piece in zip(members, np.split(blocked, cuts, axis=-1), strict=True):
            out[member] = piece.reshape(*w.shape[:-1], -1)
    return out
