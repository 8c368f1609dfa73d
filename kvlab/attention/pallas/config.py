"""The decode kernel's tiles, the split-K heuristic and the supported limits of the Pallas kernels
(the prefill kernels' tiles are their strategy objects: ``prefill.PrefillConfig``,
``hopper.MosaicPrefillConfig``).

Configs are frozen (hashable: they are static arguments of the compiled step). Tile sizes count
tokens, never pages: a KV tile of ``block_k`` tokens may span several pages or part of one, so
any page size works with any tile.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)
MAX_GQA_RATIO = 16
COMPUTE_WGS = 2         # the Hopper prefill's compute warpgroups per CTA (a third one produces)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """Paged decode (one query token per sequence, flash-decoding split-K).

    Rows of a program are the query heads of one KV group (padded to at least 16, the smallest
    matrix tile), so each KV tile is read once per group. ``num_splits=None`` lets
    ``choose_num_splits`` pick from the batch and context sizes: about ``waves`` programs per SM
    (``waves`` x SMs programs in all), at most ``max_splits``, and at least
    ``min_tiles_per_split`` KV tiles per split.
    """

    block_k: int = 64
    num_splits: int | None = None
    max_splits: int = 16
    min_tiles_per_split: int = 4
    waves: int = 2
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        check_pow2("block_k", self.block_k, 16)
        if self.num_splits is not None and self.num_splits < 1:
            raise ValueError(f"num_splits must be None (automatic) or >= 1, got {self.num_splits}")
        if self.waves < 1 or self.max_splits < 1 or self.min_tiles_per_split < 1:
            raise ValueError("waves, max_splits and min_tiles_per_split must be >= 1")


def check_pow2(name: str, value: int, lo: int) -> None:
    """Raise a ValueError unless ``value`` is a power of two >= ``lo`` (a tile size)."""
    if value < lo or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {lo}, got {value}")


def choose_num_splits(config: DecodeConfig, *, num_seqs: int, num_kv_heads: int, max_kv_len: int,
                      num_sms: int) -> int:
    """Split-K factor: enough programs for about ``config.waves`` programs per SM when the batch
    alone does not fill them (few long sequences), none when it does (many short ones), and never
    so many that a split gets fewer than ``min_tiles_per_split`` KV tiles. A power of two."""
    if config.num_splits is not None:
        return config.num_splits
    programs = max(1, num_seqs * num_kv_heads)
    want = -(-config.waves * num_sms // programs)
    tiles = -(-max_kv_len // config.block_k)
    cap = max(1, min(config.max_splits, tiles // config.min_tiles_per_split))
    splits = 1
    while splits * 2 <= min(want, cap):
        splits *= 2
    return splits


def check_supported(*, q_dtype, kv_dtype, num_q_heads: int, num_kv_heads: int, head_dim: int,
                    page_size: int) -> None:
    """Raise a ValueError naming the limit when a kernel cannot serve this combination."""
    for what, dt in (("query", q_dtype), ("KV cache", kv_dtype)):
        if jnp.dtype(dt) not in [jnp.dtype(d) for d in SUPPORTED_DTYPES]:
            raise ValueError(f"the Pallas attention kernels take bfloat16, float16 or float32 "
                             f"{what} arrays, not {jnp.dtype(dt).name}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} is not supported by the Pallas kernels; supported: "
                         f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))} (a power of two for the tiles)")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of KV heads ({num_kv_heads})")
    if num_q_heads // num_kv_heads > MAX_GQA_RATIO:
        raise ValueError(f"GQA ratio {num_q_heads // num_kv_heads} exceeds the kernels' limit of "
                         f"{MAX_GQA_RATIO} query heads per KV head")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
