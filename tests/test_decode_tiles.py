"""The decode kernel's tiles: the tuned table (per device kind and shape class), an explicit
``DecodeConfig`` winning over it, the generic default elsewhere, and the one-split decode launch that
writes every output row itself (no memset), in interpret mode on the CPU."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest
from kernel_cases import build_case, relative_error

from kvlab.attention import AttentionOptions, query_spec
from kvlab.attention.pallas import DecodeConfig, PallasAttention, choose_num_splits
from kvlab.attention.pallas import tuned as tuned_module
from kvlab.attention.pallas.launches import DecodeLaunch
from kvlab.attention.pallas.tuned import TUNED, DecodeShape, DecodeTiles, tuned_decode
from kvlab.kvcache.formats import PLAIN

H200 = next(entry for entry in TUNED if entry.device == "H200" and not entry.head_dims)
LONG = DecodeShape(num_seqs=4, num_kv_heads=8, max_kv_len=32768, num_sms=132)     # B=4, ctx 32k
WIDE = DecodeShape(num_seqs=64, num_kv_heads=8, max_kv_len=4096, num_sms=132)     # B=64, ctx 4096
SHORT = DecodeShape(num_seqs=256, num_kv_heads=8, max_kv_len=512, num_sms=132)    # B=256, ctx 512


def static_shapes(num_seqs: int, max_kv_len: int, page_size: int = 16, num_kv_heads: int = 8):
    """(batch, storage) stand-ins with only the static shapes the tile choice reads."""
    batch = types.SimpleNamespace(num_seq_slots=num_seqs,
                                  page_table=np.zeros((num_seqs, max_kv_len // page_size), np.int32))
    return batch, types.SimpleNamespace(num_kv_heads=num_kv_heads, page_size=page_size, kv_format=PLAIN)


def test_the_table_picks_per_device_kind_and_shape_class():
    assert not LONG.fills_gpu and WIDE.fills_gpu and SHORT.fills_gpu
    assert SHORT.is_short and not WIDE.is_short and not LONG.is_short
    assert tuned_decode("NVIDIA H200", WIDE) == H200.batch
    assert tuned_decode("NVIDIA H200", LONG) == H200.split
    assert tuned_decode("NVIDIA H200", SHORT) == H200.short != H200.batch
    assert H200.batch != DecodeConfig()
    few_long = DecodeShape(num_seqs=2, num_kv_heads=8, max_kv_len=1024, num_sms=132)
    assert few_long.is_short and tuned_decode("NVIDIA H200", few_long) == H200.split   # split-K first
    assert tuned_decode("NVIDIA H100 80GB HBM3", SHORT) == DecodeConfig()      # no short tiles there
    narrow = next(entry for entry in TUNED if entry.head_dims == (64,))          # D 64: its own tiles
    wide64 = DecodeShape(num_seqs=64, num_kv_heads=8, max_kv_len=4096, num_sms=132, head_dim=64)
    assert tuned_decode("NVIDIA H200", wide64) == narrow.batch != H200.batch
    assert tuned_decode("NVIDIA H200", DecodeShape(num_seqs=64, num_kv_heads=8, max_kv_len=4096,
                                                   num_sms=132, head_dim=64, kv_format="int8")).block_k == 128
    for kind in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"):         # the H100 keeps 64-token tiles
        assert tuned_decode(kind, WIDE) == tuned_decode(kind, LONG) == DecodeConfig()
    for kind in ("cpu", "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090"):    # not listed: generic
        assert tuned_decode(kind, WIDE) == tuned_decode(kind, LONG) == DecodeConfig()
    mine = (DecodeTiles(device="a100", batch=DecodeConfig(block_k=32), split=DecodeConfig(num_warps=8)),)
    assert tuned_decode("NVIDIA A100-SXM4-80GB", WIDE, mine) == DecodeConfig(block_k=32)   # case-insensitive
    assert tuned_decode("NVIDIA A100-SXM4-80GB", LONG, mine) == DecodeConfig(num_warps=8)
    assert tuned_decode("NVIDIA H200", LONG, mine) == DecodeConfig()


def test_the_backend_resolves_tiles_for_its_device_and_an_explicit_config_wins(monkeypatch):
    long_batch, storage = static_shapes(4, 32768)
    wide_batch, _ = static_shapes(64, 4096)
    assert PallasAttention().decode_config(long_batch, storage, head_dim=128) == DecodeConfig()   # CPU
    assert PallasAttention().num_splits(long_batch, storage, head_dim=128) == 8
    monkeypatch.setattr(tuned_module, "device_kind", lambda: "NVIDIA H200")
    auto = PallasAttention()
    assert auto.decode_config(wide_batch, storage, head_dim=128) == H200.batch
    assert auto.decode_config(long_batch, storage, head_dim=128) == H200.split
    assert auto.num_splits(wide_batch, storage, head_dim=128) == 1
    assert auto.num_splits(long_batch, storage, head_dim=128) == choose_num_splits(
        H200.split, num_seqs=4, num_kv_heads=8, max_kv_len=32768, num_sms=132)
    explicit = PallasAttention(decode=DecodeConfig(block_k=128, num_warps=8))
    for b in (wide_batch, long_batch):
        assert explicit.decode_config(b, storage, head_dim=128) == DecodeConfig(block_k=128, num_warps=8)
    own = PallasAttention(decode_table=(DecodeTiles(device="H200", batch=DecodeConfig(num_stages=2),
                                                    split=DecodeConfig(num_splits=3)),))
    assert own.decode_config(wide_batch, storage, head_dim=128) == DecodeConfig(num_stages=2)
    assert own.num_splits(long_batch, storage, head_dim=128) == 3
    monkeypatch.setattr(tuned_module, "device_kind", lambda: "NVIDIA H100 80GB HBM3")
    assert auto.decode_config(wide_batch, storage, head_dim=128) == DecodeConfig()
    assert auto.decode_config(long_batch, storage, head_dim=128) == DecodeConfig()
    hash(auto), hash(own)                                     # static arguments of the compiled step


def test_the_plan_carries_the_resolved_tiles(monkeypatch):
    q, storage, batch = build_case([1, 1, 1], [40, 7, 100], seed=0, page_size=8, num_q_heads=4,
                                   num_kv_heads=2, head_dim=16, dtype=jnp.float32, token_bucket=4,
                                   seq_bucket=4, page_bucket=16)
    assert batch.decode_only
    opts = AttentionOptions(sm_scale=0.25)
    monkeypatch.setattr(tuned_module, "device_kind", lambda: "NVIDIA H200")
    table = (DecodeTiles(device="H200", batch=DecodeConfig(block_k=16), split=DecodeConfig(block_k=32)),)
    for sms, want in ((8, table[0].batch), (132, table[0].split)):   # 4 slots x 2 KV heads fill 8 SMs
        be = PallasAttention(num_sms=sms, interpret=True, decode_table=table)
        assert be.plan(batch, storage, opts, query_spec(q)).launches == (DecodeLaunch(want),)
    plan = PallasAttention(num_sms=8, interpret=True).plan(batch, storage, opts, query_spec(q))
    assert plan.launches == (DecodeLaunch(H200.short),)              # 128 tokens: a short context
    explicit = DecodeConfig(block_k=16, num_splits=2)
    plan = PallasAttention(decode=explicit, interpret=True).plan(batch, storage, opts, query_spec(q))
    assert plan.launches == (DecodeLaunch(explicit),) and plan.num_splits == 2


def test_waves_set_the_split_count():
    cfg = DecodeConfig(block_k=32, waves=4, max_splits=32)
    assert choose_num_splits(cfg, num_seqs=4, num_kv_heads=8, max_kv_len=32768, num_sms=132) == 16
    assert choose_num_splits(DecodeConfig(), num_seqs=4, num_kv_heads=8, max_kv_len=32768, num_sms=132) == 8
    assert choose_num_splits(DecodeConfig(), num_seqs=64, num_kv_heads=8, max_kv_len=4096, num_sms=132) == 1
    assert choose_num_splits(cfg, num_seqs=64, num_kv_heads=8, max_kv_len=4096, num_sms=132) == 2  # 512 < 528
    with pytest.raises(ValueError, match="waves"):
        DecodeConfig(waves=0)


@pytest.mark.parametrize("token_bucket,seq_bucket", [(16, 4), (2, 8)])
def test_one_split_decode_writes_every_row_itself(token_bucket, seq_bucket):
    """A step of decodes alone with one split: the kernel creates the output (no memset); rows past
    the sequences, and slots past the token bucket, come out right."""
    q, storage, batch = build_case([1, 1], [90, 1], seed=3, page_size=8, num_q_heads=4, num_kv_heads=2,
                                   head_dim=16, dtype=jnp.float32, token_bucket=token_bucket,
                                   seq_bucket=seq_bucket, page_bucket=16)
    opts = AttentionOptions(sm_scale=0.3, sliding_window=50, num_sink_tokens=2)
    be = PallasAttention(interpret=True, decode=DecodeConfig(block_k=16, num_splits=1))
    out = be(q, storage, 1, batch, opts)
    assert relative_error(out, q, storage, batch, opts) < 1e-5
    assert float(jnp.abs(out[2:]).max(initial=0.0)) == 0.0 and not bool(jnp.isnan(out).any())
