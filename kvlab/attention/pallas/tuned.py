"""Tuned decode tiles: a small table keyed by device kind and shape class, used when
``PallasAttention(decode=None)`` (the default) leaves the tiles to the backend; an explicit
``DecodeConfig`` always wins.

The decode kernel is bound by HBM bandwidth, and which tiles reach it depends on the GPU (how many
programs an SM holds at once against how many bytes each keeps in flight) and on the shape: a
batch whose (sequence, KV head) programs fill the SMs runs one split each (``DecodeShape.fills_gpu``),
few long sequences split their context (flash-decoding) and merge the splits. The figures behind
each entry are in docs/benchmarks.md (``benchmarks/attention_kernels.py --tune``).

Everything here is static (device kind, static shapes), so the chosen config is a static argument
of the compiled step like an explicit one.
"""

from __future__ import annotations

import dataclasses

import jax

from kvlab.attention.pallas.config import DecodeConfig

SHORT_CONTEXT = 1024     # tokens: a page table this long or shorter is a short context


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeShape:
    """The static shape class of a decode launch: sequence slots, KV heads, the longest context
    the page table holds (tokens), the GPU's SM count, the name of the cache's KV format and the
    queries' head dim."""

    num_seqs: int
    num_kv_heads: int
    max_kv_len: int
    num_sms: int
    kv_format: str = "plain"
    head_dim: int = 128

    @property
    def fills_gpu(self) -> bool:
        """One program per (sequence, KV head) already gives every SM one: no split-K needed."""
        return self.num_seqs * self.num_kv_heads >= self.num_sms

    @property
    def is_short(self) -> bool:
        """The page table holds at most ``SHORT_CONTEXT`` tokens: a program walks only a few tiles."""
        return self.max_kv_len <= SHORT_CONTEXT


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeTiles:
    """The decode tiles of one device kind: ``device`` is matched as a substring of
    ``jax.Device.device_kind`` ("" matches any device), ``formats`` against the KV format's name
    and ``head_dims`` against the queries' head dim (empty: any); ``batch`` serves shapes that
    fill the GPU, ``short`` those of them whose contexts are short (``DecodeShape.is_short``;
    None: ``batch`` as well), ``split`` the few long sequences that need split-K."""

    device: str
    batch: DecodeConfig
    split: DecodeConfig
    formats: tuple[str, ...] = ()
    short: DecodeConfig | None = None
    head_dims: tuple[int, ...] = ()

    def matches(self, device_kind: str, shape: DecodeShape) -> bool:
        return (self.device.lower() in device_kind.lower()
                and (not self.formats or shape.kv_format in self.formats)
                and (not self.head_dims or shape.head_dim in self.head_dims))

    def pick(self, shape: DecodeShape) -> DecodeConfig:
        if not shape.fills_gpu:
            return self.split
        return self.short if self.short is not None and shape.is_short else self.batch


GENERIC = DecodeTiles(device="", batch=DecodeConfig(), split=DecodeConfig())

# First match wins; GENERIC serves devices not listed (and interpret mode on a CPU).
TUNED: tuple[DecodeTiles, ...] = (
    # H200 (4.0 TB/s copy), 2026-11-30: at B=64, ctx 4096 16-token tiles, 2 warps, 4 stages took
    # 0.267 ms (101% of copy, 1.02x cuDNN's dense decode; the 64-token tiles 0.307 ms, 88%). Few
    # long sequences: no setting beat the generic tiles' 8 splits (B=4, ctx 32k: 0.151-0.158 ms,
    # 32-token tiles with 16 splits 0.154-0.166 ms).
    # Short contexts, any head dim (2026-12-01; B=256, ctx 384): 64-token tiles, 4 warps, 3 stages
    # took 0.077 ms at D 64 (16-token tiles 0.092-0.095, cuDNN's dense decode 0.070) and 0.125-0.127
    # ms at D 128 (16-token tiles 0.132, cuDNN 0.127). Long contexts at D 64 (B=64, ctx 4096):
    # 32-token tiles, 4 warps, 4 stages 0.145 ms (16-token 0.172, 64-token 0.152, cuDNN 0.147).
    DecodeTiles(device="H200", batch=DecodeConfig(block_k=32, num_warps=4, num_stages=4),
                split=DecodeConfig(), formats=("plain",), head_dims=(64,),
                short=DecodeConfig(block_k=64, num_warps=4, num_stages=3)),
    DecodeTiles(device="H200", batch=DecodeConfig(block_k=16, num_warps=2, num_stages=4),
                split=DecodeConfig(), formats=("plain",),
                short=DecodeConfig(block_k=64, num_warps=4, num_stages=3)),
    # Quantized KV on the H200 (benchmarks/kv_format_kernels.py --tune, 2026-12-01): 128-token
    # tiles were best for every format at both shapes once the integer formats' scales and zero
    # points travel as one word a token, head-major within a page (B=64, ctx 4096: fp8 0.19-0.21
    # ms, int8 0.265, int4 0.243, int2 0.240, against 0.30-0.33 with 32-token tiles; B=4, ctx 32k:
    # 0.11-0.14 ms).
    DecodeTiles(device="H200", batch=DecodeConfig(block_k=128), split=DecodeConfig(block_k=128)),
    # H100 (2.9 TB/s copy): the generic 64-token tiles (91-93% of copy in its runs).
    DecodeTiles(device="H100", batch=DecodeConfig(), split=DecodeConfig()),
)


def device_kind() -> str:
    """``device_kind`` of JAX's default device (e.g. "NVIDIA H200"; "cpu" on a CPU)."""
    return jax.devices()[0].device_kind


def tuned_decode(kind: str, shape: DecodeShape, table: tuple[DecodeTiles, ...] = TUNED) -> DecodeConfig:
    """The decode tiles for device kind ``kind`` and ``shape``: the first entry of ``table`` whose
    device and KV format match, ``GENERIC`` (``DecodeConfig()``) where none does."""
    for entry in table:
        if entry.matches(kind, shape):
            return entry.pick(shape)
    return GENERIC.pick(shape)
