"""Pallas GPU kernels for the ragged paged attention contract: Triton-lowered decode, prefill,
mixed-step and KV-write kernels, and a Mosaic GPU (Hopper) prefill kernel; every kernel also runs
with ``interpret=True`` on a CPU. Importing this package loads no Pallas lowering: the kernel
modules are imported when a step first launches them."""

from kvlab.attention.pallas.backend import PallasAttention
from kvlab.attention.pallas.config import DecodeConfig, check_supported, choose_num_splits
from kvlab.attention.pallas.hopper import MosaicPrefillConfig, unsupported_reason
from kvlab.attention.pallas.plan import PallasPlan
from kvlab.attention.pallas.prefill import AutoPrefill, PrefillConfig, PrefillStrategy
from kvlab.kvcache.layouts import BlockedLayout, PagedLayout

__all__ = ["AutoPrefill", "BlockedLayout", "DecodeConfig", "MosaicPrefillConfig", "PagedLayout",
           "PallasAttention", "PallasPlan", "PrefillConfig", "PrefillStrategy", "check_supported",
           "choose_num_splits", "unsupported_reason"]
