"""Weight offload (``StreamedLayers``): layers kept in pinned host memory and streamed to the device
per layer give the same logits and greedy tokens as the same weights kept on the device; int8 /
int4 host weights come back within half a quantization step and compute what their decoded
weights compute; the device budget decides the resident layers by the arithmetic of the weight
bytes; bad settings are refused with what is allowed."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_property import reference, run_trace, traces

import kvlab
from kvlab.kvcache.formats import PLAIN
from kvlab.models import Int4Groups, Int8Channels, LlamaModel, ModelConfig, ScanLayers, StreamedLayers
from kvlab.models.llama import layer_weight_shapes, weight_shapes
from kvlab.models.streamed_layers import OFFLOADED, layer_bytes, streamed_layer_bytes


@pytest.fixture(scope="module")
def streamed(tiny_model):
    """tiny_model's weights with 0 or 1 resident layers, copied per layer or double-buffered."""
    return {(r, p): tiny_model.with_layer_loop(StreamedLayers(num_resident=r, prefetch=p))
            for r, p in itertools.product((0, 1), (0, 1))}


def test_streamed_layers_give_the_same_logits_as_resident_ones():
    model = LlamaModel(ModelConfig.tiny(num_layers=3), seed=2, layer_loop=ScanLayers())
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 256, size=23))
    want = np.asarray(model.dense_logits(tokens))
    for resident, prefetch in ((0, 0), (1, 1), (2, 0), (3, 1)):
        loop = StreamedLayers(num_resident=resident, prefetch=prefetch)
        offloaded = model.with_layer_loop(loop)
        if resident < 3:
            host = offloaded.w_qkv_offloaded[...]
            assert host.sharding.memory_kind == "pinned_host" and host.shape[0] == 3 - resident
        else:
            assert "w_qkv" + OFFLOADED not in offloaded.placed_names
        assert resident == 0 or offloaded.w_qkv[...].shape[0] == resident
        np.testing.assert_allclose(np.asarray(offloaded.dense_logits(tokens)), want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{loop}")


def test_weights_survive_a_round_trip_through_host_memory(tiny_model):
    back = tiny_model.with_layer_loop(StreamedLayers(num_resident=1)).with_layer_loop(ScanLayers())
    want, got = tiny_model.host_weights(), back.host_weights()
    assert sorted(got) == sorted(want) == sorted(weight_shapes(tiny_model.config))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@settings(max_examples=examples(12))
@given(traces(), st.sampled_from([(0, 0), (0, 1), (1, 0), (1, 1)]))
def test_engine_with_streamed_layers_equals_one_request_at_a_time(tiny_model, streamed, trace, loop):
    """Any request trace through an engine whose model streams its layers gives the greedy tokens of
    a one-request dense decode of the same weights kept on the device."""
    reqs, num_pages, page_size, max_num_seqs, steps_ahead, kv_format, decode_steps = trace
    cache = kvlab.PagedKVCache(num_pages=max(num_pages, -(-(30 + 12) // page_size)), page_size=page_size,
                               kv_format=kv_format)
    engine = kvlab.Engine(streamed[loop], cache=cache, steps_ahead=steps_ahead,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=max_num_seqs,
                                                              max_num_batched_tokens=64,
                                                              decode_steps=decode_steps))
    for (prompt, max_tokens, _), got in zip(reqs, run_trace(engine, reqs)):
        assert got == reference(tiny_model, prompt, max_tokens, kv_format)
    assert cache.stats().pages_used == 0


def test_bundled_smollm2_streams_its_layers(smollm2):
    model, tokenizer = smollm2
    prompts = [tokenizer.encode(t) for t in ("The capital of France is", "def fibonacci(n):")]
    params = kvlab.SamplingParams(max_tokens=8, ignore_eos=True)
    outputs = []
    for m in (model, model.with_layer_loop(StreamedLayers(num_resident=20, prefetch=1))):
        engine = kvlab.Engine(m, cache=kvlab.PagedKVCache(num_pages=16, page_size=16), max_model_len=64)
        outputs.append([c.token_ids for c in engine.generate(prompts, params)])
    assert outputs[0] == outputs[1]


def test_the_budget_decides_the_resident_layers():
    config = ModelConfig.tiny(num_layers=6)
    per_layer, other = layer_bytes(config, jnp.bfloat16)
    assert per_layer == 2 * sum(int(np.prod(s[1:])) for s in layer_weight_shapes(config).values())
    assert other == 2 * (2 * 256 * 64 + 64)                # embed, lm_head, final_norm
    for prefetch in (0, 1):
        floor = other + (1 + prefetch) * per_layer
        for extra, resident in ((0, 0), (per_layer - 1, 0), (2 * per_layer, 2), (100 * per_layer, 6)):
            loop = StreamedLayers.for_budget(config, device_bytes=floor + extra, dtype=jnp.bfloat16,
                                             prefetch=prefetch)
            assert (loop.num_resident, loop.prefetch) == (resident, prefetch)
        with pytest.raises(ValueError, match=f"the least is {floor}"):
            StreamedLayers.for_budget(config, device_bytes=floor - 1, dtype=jnp.bfloat16, prefetch=prefetch)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="prefetch must be 0 .* or 1"):
        StreamedLayers(prefetch=2)
    with pytest.raises(ValueError, match="num_resident must be >= 0"):
        StreamedLayers(num_resident=-1)
    with pytest.raises(ValueError, match="num_resident=3 but the model has 2 layers"):
        LlamaModel(ModelConfig.tiny(), layer_loop=StreamedLayers(num_resident=3))


def test_the_deepspeed_preset_streams_what_its_budget_does_not_hold(tiny_model):
    from kvlab.bench import presets

    prompts = [[5, 9, 11, 13], list(range(20, 40))]
    params = kvlab.SamplingParams(max_tokens=6, ignore_eos=True)
    per_layer, other = layer_bytes(tiny_model.config, tiny_model.dtype)
    outputs = []
    for budget_gb, resident in ((None, None), (0, 0), ((other + 2 * per_layer) / 1e9, 1)):
        engine = presets.deepspeed(kv_tokens=512, block_tokens=16, weight_budget_gb=budget_gb).engine(
            tiny_model, max_model_len=64)
        assert (budget_gb is None) == (engine.model is tiny_model)
        if resident is not None:
            assert engine.model.layer_loop.num_resident == resident
        outputs.append([c.token_ids for c in engine.generate(prompts, params)])
    assert outputs[0] == outputs[1] == outputs[2]


# ---- int8 / int4 weights in host memory ---------------------------------------------------------
QUANTIZED = [Int8Channels(), Int4Groups(group_size=16), Int4Groups(group_size=64)]


@settings(max_examples=examples(20), deadline=None)
@given(st.sampled_from(QUANTIZED), st.integers(1, 3), st.sampled_from([64, 128]), st.integers(1, 9),
       st.floats(1e-3, 1e3), st.integers(0, 2 ** 31 - 1))
def test_host_formats_round_trip_within_half_a_step(fmt, layers, rows, cols, magnitude, seed):
    """Each element comes back within half its quantization step (the scale of its channel or
    group), the codes use the format's range, and the parts are the bytes ``nbytes`` counts."""
    w = np.random.default_rng(seed).normal(scale=magnitude, size=(layers, rows, cols)).astype(np.float32)
    w[:, :, 0] = 0.0                                               # an all-zero channel decodes to zeros
    parts = fmt.encode(w, jnp.float32)
    back = np.asarray(fmt.decode(parts))
    assert back.shape == w.shape and back.dtype == np.float32
    scale = parts["_scale"]
    step = scale if isinstance(fmt, Int8Channels) else np.repeat(scale, fmt.group_size, axis=1)
    assert np.all(np.abs(back - w) <= 0.5 * step * (1 + 1e-6) + 1e-30)
    assert np.all(back[:, :, 0] == 0.0)
    per_layer = sum(p[0].nbytes for p in parts.values())
    assert per_layer == fmt.nbytes((rows, cols), jnp.float32)
    layer = np.asarray(fmt.decode({s: p[layers - 1] for s, p in parts.items()}))     # one layer alone
    np.testing.assert_array_equal(layer, back[layers - 1])


@pytest.mark.parametrize("fmt", QUANTIZED, ids=lambda f: f"{f.name}-{getattr(f, 'group_size', '')}")
def test_quantized_host_weights_stream_as_their_decoded_weights(fmt):
    """A model whose streamed layers are int8/int4 in host memory computes what a resident model
    with the decoded weights computes; the host arrays hold the codes."""
    model = LlamaModel(ModelConfig.tiny(num_layers=3), seed=2, layer_loop=ScanLayers())
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 256, size=23))
    for resident, prefetch in ((0, 0), (1, 1)):
        offloaded = model.with_layer_loop(StreamedLayers(num_resident=resident, prefetch=prefetch,
                                                         host_format=fmt))
        codes = offloaded.w_qkv_offloaded[...]
        assert codes.sharding.memory_kind == "pinned_host" and codes.dtype in (jnp.int8, jnp.uint8)
        assert offloaded.w_qkv_offloaded_scale[...].shape[0] == 3 - resident
        decoded = LlamaModel(model.config, dtype=model.dtype, weights=offloaded.host_weights(),
                             layer_loop=ScanLayers())
        np.testing.assert_allclose(np.asarray(offloaded.dense_logits(tokens)),
                                   np.asarray(decoded.dense_logits(tokens)), rtol=1e-5, atol=1e-5)
        if resident:
            np.testing.assert_array_equal(np.asarray(decoded.w_qkv[...][0]), np.asarray(model.w_qkv[...][0]))
        lost = np.abs(np.asarray(decoded.w_gate_up[...]) - np.asarray(model.w_gate_up[...])).max()
        assert 0 < lost < 0.1 * np.abs(np.asarray(model.w_gate_up[...])).max()


def test_the_engine_with_int8_host_weights_equals_a_plain_decode_of_its_weights():
    model = LlamaModel(ModelConfig.tiny(), seed=3, layer_loop=ScanLayers())
    offloaded = model.with_layer_loop(StreamedLayers(num_resident=1, host_format=Int8Channels()))
    decoded = LlamaModel(model.config, dtype=model.dtype, weights=offloaded.host_weights(),
                         layer_loop=ScanLayers())
    prompts = [[5, 9, 11, 13], list(range(20, 40))]
    engine = kvlab.Engine(offloaded, cache=kvlab.PagedKVCache(num_pages=16, page_size=8), max_model_len=64)
    got = [c.token_ids for c in engine.generate(prompts, kvlab.SamplingParams(max_tokens=8, ignore_eos=True))]
    assert got == [reference(decoded, p, 8, PLAIN) for p in prompts]


def test_the_budget_counts_a_quantized_layer_and_its_decoded_copy():
    config = ModelConfig.tiny(num_layers=6)
    per_layer, other = layer_bytes(config, jnp.bfloat16)
    moved, buffer = streamed_layer_bytes(config, jnp.bfloat16, Int8Channels())
    assert per_layer / 2 < moved < 0.6 * per_layer and buffer == moved + per_layer - 2 * 2 * 64   # norms stay
    loop = StreamedLayers.for_budget(config, device_bytes=other + buffer, dtype=jnp.bfloat16,
                                     host_format=Int8Channels())
    assert (loop.num_resident, loop.host_format) == (0, Int8Channels())
    with pytest.raises(ValueError, match=f"the least is {other + buffer}"):
        StreamedLayers.for_budget(config, device_bytes=other + buffer - 1, dtype=jnp.bfloat16,
                                  host_format=Int8Channels())


def test_bad_host_formats_are_refused():
    with pytest.raises(ValueError, match="group_size must be an even number"):
        Int4Groups(group_size=3)
    with pytest.raises(ValueError, match="group 48 input rows; a weight of shape .* has 64"):
        LlamaModel(ModelConfig.tiny(), layer_loop=StreamedLayers(host_format=Int4Groups(group_size=48)))
