"""KV formats (``kvlab.kvcache.formats``) and the quantized storage: round-trip error bounds per
format (hypothesis), bit packing, calibration, page records that move unchanged, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kvlab.kvcache.formats import (
    CalibratedScales,
    Fp8E4M3,
    Fp8E5M2,
    Int4,
    Int8,
    PerHead,
    PerTensor,
    Plain,
    StaticScales,
    bytes_per_token,
)
from kvlab.kvcache.formats.base import decode_tile
from kvlab.kvcache.formats.integer import AsymmetricInt
from kvlab.kvcache.quantized_storage import QuantizedPagedKVStorage

# few shapes (each new one compiles every op of encode and decode again); any values
values = hnp.arrays(np.float32,
                    st.tuples(st.sampled_from([1, 5]), st.integers(1, 2), st.sampled_from([8, 64])),
                    elements=st.floats(-50, 50, width=32))


@settings(max_examples=30)
@given(x=values, bits=st.sampled_from([8, 4, 2]))
def test_integer_round_trip_is_within_half_a_step(x, bits):
    fmt = AsymmetricInt(bits=bits)
    data, meta = fmt.encode(jnp.asarray(x), jnp.ones(x.shape[1]))
    assert data.dtype == jnp.uint8 and data.shape == (*x.shape[:-1], x.shape[-1] * bits // 8)
    back = np.asarray(fmt.decode(data, meta, jnp.ones(x.shape[1]), jnp.float32))
    scale, zero = np.asarray(meta[..., 0], np.float32), np.asarray(meta[..., 1], np.float32)
    # half a quantisation step, plus the float16 rounding of the stored scale and zero point
    slack = 0.5 * scale + fmt.levels * scale * 2 ** -10 + np.abs(zero) * 2 ** -10 + 1e-6
    assert np.all(np.abs(back - x) <= slack[..., None])
    span = x.max(axis=-1) - x.min(axis=-1)
    np.testing.assert_allclose(scale, span / fmt.levels, rtol=2e-3, atol=1e-6)


def _codes_as_rows(codes, bits):
    """Rows whose min is 0 and max 2**bits - 1: scale 1 and zero 0, so encoding keeps the codes."""
    codes = codes & ((1 << bits) - 1)
    codes[:, 0], codes[:, 1] = 0, (1 << bits) - 1
    return codes


@settings(max_examples=30)
@given(codes=hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.sampled_from([8, 16, 64]))),
       bits=st.sampled_from([8, 4, 2]))
def test_tile_packing_round_trips(codes, bits):
    """encode_tile, tile_codes and tile_affine (what the kernels run) on the format's parts."""
    fmt = AsymmetricInt(bits=bits)
    codes = _codes_as_rows(codes, bits)
    parts = tuple(jnp.split(jnp.asarray(codes, jnp.float32), fmt.tile_parts, axis=-1))
    data, (scale, zero) = fmt.encode_tile(parts, jnp.float32(1))
    assert data.dtype == jnp.uint8 and data.shape[-1] == codes.shape[-1] * bits // 8
    assert np.all(np.asarray(scale) == 1) and np.all(np.asarray(zero) == 0)
    back = jnp.concatenate(decode_tile(fmt, data, (scale, zero), jnp.float32(1), jnp.float32), axis=-1)
    np.testing.assert_array_equal(np.asarray(back), codes)
    for dtype in (jnp.float16, jnp.float32):         # codes exact in the kernels' code types
        got = jnp.concatenate(fmt.tile_codes(data, dtype), axis=-1)
        assert got.dtype == dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), codes)


def test_int4_packs_the_two_halves_of_a_row():
    """Byte j holds element j (low nibble) and element j + D/2 (high): kernels unpack halves."""
    codes = _codes_as_rows(np.array([[0, 15, 2, 3, 4, 5, 6, 7]], np.uint8), 4)
    data, _ = Int4().encode(jnp.asarray(codes, jnp.float32)[:, None, :], jnp.ones(1))
    assert np.asarray(data).reshape(-1).tolist() == [0 | 4 << 4, 15 | 5 << 4, 2 | 6 << 4, 3 | 7 << 4]


@settings(max_examples=40)
@given(x=values, element=st.sampled_from([Fp8E4M3, Fp8E5M2]), scale=st.floats(1e-3, 10))
def test_fp8_round_trip_is_within_the_element_precision(x, element, scale):
    fmt = element(scales=StaticScales(k=scale, v=scale))
    layer_scale = jnp.full(x.shape[1], scale, jnp.float32)
    data, meta = fmt.encode(jnp.asarray(x), layer_scale)
    back = np.asarray(fmt.decode(data, meta, layer_scale, jnp.float32))
    mantissa = 3 if element is Fp8E4M3 else 2
    inside = np.abs(x) / scale <= fmt.max_value
    tiny = float(jnp.finfo(fmt.element).smallest_subnormal) * scale
    err = np.abs(back - x)
    assert np.all(err[inside] <= np.abs(x[inside]) * 2.0 ** -(mantissa + 1) + tiny)
    np.testing.assert_allclose(np.abs(back[~inside]), fmt.max_value * scale, rtol=1e-6)  # saturates


def test_calibrated_fp8_scales_are_set_once_from_the_first_batch():
    fmt = Fp8E4M3(scales=CalibratedScales(granularity=PerHead()))
    s = QuantizedPagedKVStorage.zeros(fmt, num_layers=2, num_pages=3, page_size=4, num_kv_heads=2,
                                      head_dim=8, dtype=jnp.float32)
    assert float(s.layer_scales.max()) == 0.0                       # not calibrated yet
    x = jnp.stack([jnp.full((3, 8), 2.0), jnp.full((3, 8), 8.0)], axis=1)      # [3, 2, 8]
    x = x.at[2].set(1000.0)                                                      # a padding row
    s = s.write(0, x, -x, jnp.array([0, 1, -1]))
    np.testing.assert_allclose(np.asarray(s.layer_scales[0]), [[2 / 200, 8 / 200], [2 / 100, 8 / 100]])
    assert float(s.layer_scales[1].max()) == 0.0                    # layer 1 not written yet
    s2 = s.write(0, 10 * x, x, jnp.array([2, 3, 4]))
    np.testing.assert_array_equal(np.asarray(s2.layer_scales[0]), np.asarray(s.layer_scales[0]))
    per_tensor = Fp8E4M3(scales=CalibratedScales(granularity=PerTensor()))
    t = QuantizedPagedKVStorage.zeros(per_tensor, num_layers=1, num_pages=3, page_size=4, num_kv_heads=2,
                                      head_dim=8, dtype=jnp.float32).write(0, x, x, jnp.array([0, 1, -1]))
    np.testing.assert_allclose(np.asarray(t.layer_scales[0, 0]), [8 / 200, 8 / 200])


def test_calibration_waits_for_a_batch_with_something_in_it():
    """A first write of no valid rows, of zeros or of a NaN leaves a head uncalibrated (it is not
    locked to a useless scale); the next write with a finite, nonzero amax calibrates it."""
    fmt = Fp8E4M3(scales=CalibratedScales(granularity=PerHead()))
    s = QuantizedPagedKVStorage.zeros(fmt, num_layers=1, num_pages=3, page_size=4, num_kv_heads=2,
                                      head_dim=8, dtype=jnp.float32)
    ones = jnp.ones((2, 2, 8))
    s = s.write(0, ones, ones, jnp.array([-1, -1]))                       # padding rows only
    s = s.write(0, ones.at[:, 0].set(0.0), ones.at[:, 1].set(jnp.nan), jnp.array([0, 1]))
    scales = np.asarray(s.layer_scales[0])
    assert scales[0, 0] == 0 and scales[0, 1] == 1 / 200 and scales[1, 1] == 0 and scales[1, 0] == 1 / 100
    k, _ = s.gather_pages(0, jnp.array([0]))
    assert np.all(np.asarray(k)[0, :2, 0] == 0)                           # zeros stored, zeros read
    s = s.write(0, 3 * ones, 3 * ones, jnp.array([2, 3]))
    np.testing.assert_allclose(np.asarray(s.layer_scales[0]), [[3 / 200, 1 / 200], [1 / 100, 3 / 100]])


@pytest.mark.parametrize("fmt", [Int8(), Int4()], ids=lambda f: f.name)
def test_integer_rows_beyond_float16_saturate_instead_of_turning_infinite(fmt):
    """A row whose range passes float16's (scale and zero point are float16) reads back clipped
    to +-65504, as fp8 saturates, not as -inf or NaN."""
    x = jnp.array([[-1e5, 1.0, 2.0, 7e4], [-3.0, np.inf, 0.5, 1.0]], jnp.float32)[:, None, :]   # [2, 1, 4]
    s = QuantizedPagedKVStorage.zeros(fmt, num_layers=1, num_pages=1, page_size=4, num_kv_heads=1,
                                      head_dim=4, dtype=jnp.float32).write(0, x, x, jnp.array([0, 1]))
    k, _ = s.gather_pages(0, jnp.array([0]))
    k = np.asarray(k)[0, :2, 0]
    assert np.isfinite(k).all()
    assert k[0, 0] == -65504 and abs(k[0, 3] - 65504) < 65504 * 2 / fmt.levels
    assert abs(k[1, 1] - 65504) < 65504 * 2 / fmt.levels


FORMATS = [Int8(), Int4(), Fp8E4M3(), Fp8E5M2(scales=StaticScales(k=0.05, v=(0.1, 0.2)))]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_storage_writes_encoded_rows_and_pages_move_as_stored(fmt):
    dims = dict(num_layers=2, num_pages=5, page_size=4, num_kv_heads=2, head_dim=16, dtype=jnp.bfloat16)
    s = QuantizedPagedKVStorage.zeros(fmt, **dims)
    k = jax.random.normal(jax.random.key(1), (7, 2, 16), jnp.float32)
    v = jax.random.normal(jax.random.key(2), (7, 2, 16), jnp.float32)
    slots = jnp.array([0, 1, 2, 3, 4, 9, -1])
    s = s.write(1, k, v, slots)
    got_k, got_v = s.gather_pages(1, jnp.array([0, 1, 2]))       # [3, P, Hkv, D]
    want_k = fmt.decode(*fmt.encode(k, s.layer_scales[1, 0]), s.layer_scales[1, 0], jnp.bfloat16)
    want_v = fmt.decode(*fmt.encode(v, s.layer_scales[1, 1]), s.layer_scales[1, 1], jnp.bfloat16)
    flat_k, flat_v = got_k.reshape(-1, 2, 16), got_v.reshape(-1, 2, 16)
    for row, slot in enumerate(slots.tolist()[:-1]):
        np.testing.assert_array_equal(np.asarray(flat_k[slot]), np.asarray(want_k[row]))
        np.testing.assert_array_equal(np.asarray(flat_v[slot]), np.asarray(want_v[row]))
    records = s.read_pages(jnp.array([0, 2]))
    assert records.dtype == jnp.uint8
    per_token = bytes_per_token(fmt, num_layers=2, num_kv_heads=2, head_dim=16, model_dtype=jnp.bfloat16)
    assert records.size == 2 * 4 * per_token                     # two pages of four tokens, as stored
    moved = s.write_pages(jnp.array([3, 4]), records)
    for a, b in zip(moved.gather_pages(1, jnp.array([3, 4])), s.gather_pages(1, jnp.array([0, 2]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bytes_per_token_gives_the_promised_capacity_ratios():
    dims = dict(num_layers=16, num_kv_heads=8, head_dim=64, model_dtype=jnp.bfloat16)
    plain = bytes_per_token(Plain(), **dims)
    assert plain == 2 * 16 * 8 * 64 * 2
    assert plain / bytes_per_token(Fp8E4M3(), **dims) == 2
    assert 1.8 < plain / bytes_per_token(Int8(), **dims) < 2       # + a float16 scale and zero a row
    assert 3.5 < plain / bytes_per_token(Int4(), **dims) < 4
    from kvlab.engine.defaults import kv_bytes_per_token
    from kvlab.models import ModelConfig

    config = ModelConfig.llama_3_2_1b()
    budget = 8 << 30                                             # the same bytes hold 2x / ~3.6x the tokens
    tokens = {f.name: budget // kv_bytes_per_token(config, jnp.bfloat16, f)
              for f in (Plain(), Fp8E4M3(), Int4())}
    assert tokens["fp8-e4m3fn"] == 2 * tokens["plain"] and tokens["int4"] > 3.5 * tokens["plain"]


def test_bad_formats_say_what_is_allowed():
    with pytest.raises(ValueError, match="head_dim must be a multiple of 2"):
        QuantizedPagedKVStorage.zeros(Int4(), num_layers=1, num_pages=2, page_size=4, num_kv_heads=1,
                                      head_dim=7, dtype=jnp.float32)
    with pytest.raises(ValueError, match="bits must be 8, 4 or 2"):
        AsymmetricInt(bits=3)
    with pytest.raises(ValueError, match="one per KV head"):
        QuantizedPagedKVStorage.zeros(Fp8E4M3(scales=StaticScales(k=(0.1, 0.2, 0.3))), num_layers=1,
                                      num_pages=2, page_size=4, num_kv_heads=2, head_dim=8, dtype=jnp.float32)
    with pytest.raises(ValueError, match="positive"):
        Fp8E4M3(scales=StaticScales(v=0.0)).initial_layer_scales(num_layers=1, num_kv_heads=1)
