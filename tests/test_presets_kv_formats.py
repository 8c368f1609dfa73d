"""The quantized presets (vllm-fp8, lmdeploy-kv8/kv4, trtllm-fp8/int8): each composes its system's
cache and scheduler with the KV format the system documents, says how it still differs, picks an
attention backend that reads its format (through the backends' ``check`` contract), and in the
engine gives the greedy tokens of a one-request dense decode whose K/V go through the same format."""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import numpy as np
import pytest

import kvlab
from kvlab.bench import presets
from kvlab.bench.serving_attention import TYPICAL_SHAPE, model_shape, refusal, serving_attention
from kvlab.engine import DenseReferenceDecoder
from kvlab.kvcache.formats import PLAIN, CalibratedScales, Fp8E4M3, Int4, Int8, PerTensor, StaticScales

VLLM_FP8 = Fp8E4M3(scales=CalibratedScales(granularity=PerTensor()))
# name -> (base preset, its KV format)
EXPECTED = {
    "vllm-fp8": ("vllm", VLLM_FP8),               # kv_cache_dtype="fp8" (e4m3), calculate_kv_scales=True
    "lmdeploy-kv8": ("lmdeploy", Int8()),         # TurbomindEngineConfig(quant_policy=8)
    "lmdeploy-kv4": ("lmdeploy", Int4()),         # TurbomindEngineConfig(quant_policy=4)
    "trtllm-fp8": ("trtllm", VLLM_FP8),           # FP8 KV, per-tensor scales (first batch here)
    "trtllm-int8": ("trtllm", Int8()),            # INT8 KV (per-token int8 is kvlab's nearest)
}
# small sizes: every step of the greedy test below pads to one shape (16 tokens, 4 rows), one compile
SIZES = {"vllm": dict(token_budget=16, page_size=16), "lmdeploy": dict(token_budget=16, block_tokens=16),
         "trtllm": dict(token_budget=16, tokens_per_block=16)}
PROMPTS = [[40, 41, 42, 43, 44, 5], [40, 41, 42, 43, 44, 6], [9, 10, 11]]
PARAMS = kvlab.SamplingParams(max_tokens=4, ignore_eos=True)
DENSE: dict = {}                  # format -> its dense reference decoder (one compilation per format)


def small(name):
    base = EXPECTED[name][0] if name in EXPECTED else name
    return presets.PRESETS[name](kv_tokens=512, max_num_seqs=4, **SIZES[base])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_quantized_preset_is_its_system_with_the_documented_format(name):
    base, fmt = EXPECTED[name]
    p, plain = small(name), small(base)
    assert p.name == name and p.cache.kv_format == fmt and plain.cache.kv_format == PLAIN
    assert type(p.cache) is type(plain.cache) and type(p.scheduler) is type(plain.scheduler)
    assert p.cache.page_size == plain.cache.page_size
    assert set(plain.missing) <= set(p.missing) and all(isinstance(m, str) and m for m in p.missing)
    # the command line records every field of a preset: the same fields, the format's default changed
    sig, base_sig = inspect.signature(presets.PRESETS[name]), inspect.signature(presets.PRESETS[base])
    assert list(sig.parameters) == list(base_sig.parameters)
    assert sig.parameters["kv_format"].default == fmt and base_sig.parameters["kv_format"].default == PLAIN
    assert name in presets.PRESETS and name not in presets.SEEDS


def test_missing_notes_follow_the_format():
    assert presets.lmdeploy(kv_tokens=1024).missing == ()
    assert not any("fp8" in m.lower() or "int8" in m.lower() for m in presets.trtllm(kv_tokens=1024).missing)
    int8, fp8 = presets.trtllm_int8(kv_tokens=1024).missing, presets.trtllm_fp8(kv_tokens=1024).missing
    assert any("kv_cache_scaling_factor" in m and "per token" in m for m in int8)
    assert any("calibrated offline" in m for m in fp8)
    static = presets.trtllm(kv_tokens=1024, kv_format=Fp8E4M3(scales=StaticScales(k=0.02, v=0.02))).missing
    assert not any("calibrated offline" in m or "per token" in m for m in static)   # a checkpoint's scales
    windowed = presets.trtllm_int8(kv_tokens=4096, window=64, token_budget=128, max_num_seqs=8)
    assert type(windowed.cache).__name__ == "CircularKVCache" and windowed.cache.kv_format == Int8()
    assert not any("int8" in m or "int4" in m for m in presets.lmdeploy_kv4(kv_tokens=1024).missing
                   if "kernel" not in m)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_kernel_note_says_what_the_pallas_contract_says(name):
    """The note on attention kernels is there exactly when the Pallas backend's ``check`` refuses
    the format for a typical model (it goes once the kernels read the format)."""
    p = small(name)
    refused = refusal(kvlab.PallasAttention(interpret=True), p.cache.kv_format, page_size=p.cache.page_size,
                      **TYPICAL_SHAPE)
    assert any("attention kernels" in m for m in p.missing) == (refused is not None)


def test_a_format_by_name_is_refused_naming_the_quantized_presets():
    with pytest.raises(TypeError, match="lmdeploy-kv8"):
        presets.lmdeploy(kv_tokens=1024, kv_format="int8")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlainOnly:
    """A backend whose ``check`` refuses quantized formats (or, ``any_model=False``, everything)."""

    name: str = "plain-only"
    any_model: bool = True

    def check(self, *, kv_format=PLAIN, **shape):
        if not self.any_model:
            raise ValueError("this backend serves no model")
        if kv_format != PLAIN:
            raise ValueError(f"no {kv_format.name} here")


def test_a_backend_that_cannot_read_the_format_gives_way_to_the_reference(tiny_model):
    cache = small("lmdeploy-kv8").cache
    with pytest.warns(UserWarning, match=r"plain-only attention backend cannot read .* int8 KV \(no int8"):
        assert serving_attention(tiny_model, cache, PlainOnly()) == kvlab.ReferenceAttention()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert serving_attention(tiny_model, small("lmdeploy").cache, PlainOnly()) == PlainOnly()
        refuses_model = PlainOnly(any_model=False)           # kept: the engine raises, naming the limit
        assert serving_attention(tiny_model, cache, refuses_model) is refuses_model
    with warnings.catch_warnings(record=True) as caught:      # the kernels, whatever they read today
        warnings.simplefilter("always")
        chosen = serving_attention(tiny_model, cache, kvlab.PallasAttention(interpret=True))
    assert refusal(chosen, Int8(), page_size=16, **model_shape(tiny_model)) is None
    assert bool(caught) == (chosen.name == "reference")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FrozenScales:
    """Fixed per-layer fp8 scales ``[L, 2, Hkv]`` (flattened): those a cache calibrated, so the dense
    reference stores K/V exactly as the calibrated cache does."""

    values: tuple[float, ...]

    def initial(self, num_layers, num_kv_heads):
        return np.asarray(self.values, np.float32).reshape(num_layers, 2, num_kv_heads)

    def calibrate(self, layer_scale, x, valid, which):
        return layer_scale


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quantized_presets_give_the_dense_greedy_tokens_through_their_format(tiny_model, name):
    engine = small(name).engine(tiny_model, max_model_len=32)
    outs = [o.token_ids for o in engine.generate(PROMPTS, PARAMS)]
    fmt, scales = engine.storage.kv_format, np.asarray(engine.storage.layer_scales)
    assert fmt == EXPECTED[name][1] and np.all(scales > 0)     # fp8: calibrated on the first batch
    c = tiny_model.config
    if not np.all(fmt.initial_layer_scales(num_layers=c.num_layers, num_kv_heads=c.num_kv_heads) > 0):
        fmt = dataclasses.replace(fmt, scales=FrozenScales(values=tuple(scales.ravel().tolist())))
    ref = DENSE.setdefault(fmt, DenseReferenceDecoder(tiny_model, kv_format=fmt))
    assert outs == [ref.greedy(p, PARAMS.max_tokens) for p in PROMPTS]
    assert engine.runner.num_compilations == 1
