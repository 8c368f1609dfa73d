"""Pallas GPU kernels for the ragged paged attention contract: Triton-lowered decode, prefill,
mixed-step and KV-write kernels, and a Mosaic GPU (Hopper) prefill kernel; every kernel also runs
with ``interpret=True`` on a CPU."""

from kvlab.attention.pallas.backend import PallasAttention
from kvlab.attention.pallas.config import DecodeConfig, PrefillConfig, check_supported, choose_num_splits
from kvlab.attention.pallas.layout import BlockedLayout, PagedLayout, layout_of
from kvlab.attention.pallas.mosaic_prefill import MosaicPrefillConfig

__all__ = ["BlockedLayout", "DecodeConfig", "MosaicPrefillConfig", "PagedLayout", "PallasAttention",
           "PrefillConfig",
           "check_supported", "choose_num_splits", "layout_of"]
