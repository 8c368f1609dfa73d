"""KV formats: how a cache's pages store K and V (plain, fp8, int8, int4, KIVI), as strategy objects."""

from kvlab.kvcache.formats.base import META_DTYPE, PLAIN, KVFormat, Plain, bytes_per_token
from kvlab.kvcache.formats.fp8 import (
    CalibratedScales,
    Fp8,
    Fp8E4M3,
    Fp8E5M2,
    PerHead,
    PerTensor,
    StaticScales,
)
from kvlab.kvcache.formats.integer import AsymmetricInt, Int4, Int8
from kvlab.kvcache.formats.kivi import Kivi

__all__ = ["META_DTYPE", "PLAIN", "AsymmetricInt", "CalibratedScales", "Fp8", "Fp8E4M3", "Fp8E5M2", "Int4",
           "Int8", "KVFormat", "Kivi", "PerHead", "PerTensor", "Plain", "StaticScales", "bytes_per_token"]
