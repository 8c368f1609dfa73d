"""The Pallas kernels compiled for the GPU (run on the lent machine: ``JAX_PLATFORMS=cuda pytest
-m gpu``), against the reference in float32 at full matmul precision: the same random ragged
batches as the interpret-mode tests, with the default tile sizes and larger shapes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import OPTIONS, build_case, ragged_lengths, relative_error

from kvlab.attention import AttentionOptions
from kvlab.attention.pallas import DecodeConfig, MosaicPrefillConfig, PallasAttention

pytestmark = pytest.mark.gpu

# (options, dtype, page size, fused, decode splits, blocked layout, Hq, Hkv, D); decode splits
# None: the tuned tiles for this GPU (``decode=None``; 16 sequence slots: the split-K class), "batch":
# the tuned tiles of the class whose batch fills the GPU (told it has 64 SMs).
COMBOS = [("plain", "bfloat16", 16, True, None, False, 32, 8, 128),
          ("plain", "float32", 8, False, 4, False, 8, 8, 64),
          ("plain", "bfloat16", 16, False, "batch", False, 32, 8, 128),
          ("window+sinks", "bfloat16", 32, True, 4, True, 12, 4, 128),
          ("window", "float16", 128, True, None, False, 16, 2, 256),
          ("softcap", "bfloat16", 64, False, None, True, 7, 7, 64)]


@functools.cache
def compiled(fused, splits, options):
    decode = None if splits in (None, "batch") else DecodeConfig(num_splits=splits)
    be = PallasAttention(fuse_mixed=fused, decode=decode, num_sms=64 if splits == "batch" else None)
    return jax.jit(lambda q, storage, batch: be(q, storage, 1, batch, options))


@settings(max_examples=25, deadline=None)
@given(combo=st.sampled_from(COMBOS), data=st.data(), seed=st.integers(0, 2 ** 16))
def test_compiled_kernels_match_the_reference(combo, data, seed):
    assert jax.default_backend() == "gpu", "run with JAX_PLATFORMS=cuda on the GPU machine"
    name, dtype, page, fused, splits, blocked, hq, hkv, d = combo
    q_lens, kv_lens = data.draw(ragged_lengths(max_seqs=16, max_tokens=256, max_kv=32 * page - 1,
                                               decode_only=data.draw(st.booleans())))
    q, storage, batch = build_case(q_lens, kv_lens, seed=seed, page_size=page, num_q_heads=hq,
                                   num_kv_heads=hkv,
                                   head_dim=d, dtype=jnp.dtype(dtype), token_bucket=256, seq_bucket=16,
                                   page_bucket=32, blocked=blocked)
    options = AttentionOptions(sm_scale=d ** -0.5, **OPTIONS[name])
    if name in ("plain", "softcap") and dtype != "float32" and d <= 128:   # the Hopper prefill serves these
        pick = PallasAttention().prefill_kernel(dtype=jnp.dtype(dtype), head_dim=d, page_size=page,
                                                options=options)
        assert pick == MosaicPrefillConfig()
    out = compiled(fused, splits, options)(q, storage, batch)
    assert not bool(jnp.isnan(out).any())
    err = relative_error(out, q, storage, batch, options)
    assert err < (1e-5 if dtype == "float32" else 1e-2), (q_lens, kv_lens, err)
