"""Fused projection weights (``kvlab.models.fused_projections``): one matmul of the fused weight
gives each member's matmul, on one device and per shard of a column split; ``unfuse`` undoes
``fuse``; the model keeps only fused weights and gives the separate ones back."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlab.models import LlamaModel, ModelConfig
from kvlab.models.fused_projections import fuse, split_columns, unfuse


@settings(max_examples=40, deadline=None)
@given(parts=st.sampled_from([1, 2, 4]), q=st.integers(1, 3), kv=st.integers(1, 3), rows=st.integers(1, 5),
       seed=st.integers(0, 2**16), as_jax=st.booleans())
def test_one_fused_matmul_gives_each_members_matmul(parts, q, kv, rows, seed, as_jax):
    rng = np.random.default_rng(seed)
    widths = {"wq": 4 * q * parts, "wk": 2 * kv * parts, "wv": 2 * kv * parts}
    weights = {n: rng.standard_normal((2, 8, w)).astype(np.float32) for n, w in widths.items()}
    weights["attn_norm"] = np.ones((2, 8), np.float32)
    given_weights = {n: jnp.asarray(w) for n, w in weights.items()} if as_jax else weights
    fused = fuse(given_weights, parts)
    assert sorted(fused) == ["attn_norm", "w_qkv"] and fused["w_qkv"].shape == (2, 8, sum(widths.values()))
    x = rng.standard_normal((rows, 8)).astype(np.float32)
    got = split_columns(jnp.asarray(x) @ jnp.asarray(fused["w_qkv"][1]), tuple(widths.values()), parts)
    for name, out in zip(widths, got, strict=True):
        np.testing.assert_allclose(np.asarray(out), x @ weights[name][1], rtol=1e-5, atol=1e-5, err_msg=name)
    # shard s of a column split holds its share of every member, side by side
    block = fused["w_qkv"].shape[-1] // parts
    for s in range(parts):
        local = split_columns(jnp.asarray(x) @ jnp.asarray(fused["w_qkv"][1][:, s * block:(s + 1) * block]),
                              tuple(w // parts for w in widths.values()), 1)
        for name, out in zip(widths, local, strict=True):
            share = weights[name][1][:, s * (widths[name] // parts):(s + 1) * (widths[name] // parts)]
            np.testing.assert_allclose(np.asarray(out), x @ share, rtol=1e-5, atol=1e-5)
    back = unfuse(fused, widths, parts)
    for name, w in weights.items():
        np.testing.assert_array_equal(back[name], w)


def test_a_width_that_does_not_split_is_refused():
    w = {"w_gate": np.zeros((1, 4, 6)), "w_up": np.zeros((1, 4, 6))}
    with pytest.raises(ValueError, match="w_gate has 6 output columns, which do not split in 4 parts"):
        fuse(w, parts=4)


def test_the_model_keeps_fused_weights_and_gives_the_separate_ones_back():
    config = ModelConfig.tiny(attention_bias=True)
    model = LlamaModel(config, seed=3)
    assert {"w_qkv", "b_qkv", "w_gate_up"} <= set(model.placed_names)
    assert not {"wq", "wk", "wv", "bq", "w_gate", "w_up"} & set(model.placed_names)
    weights = model.host_weights()
    again = LlamaModel(config, weights=weights)
    tokens = jnp.asarray([3, 9, 27, 81])
    want = np.asarray(model.dense_logits(tokens))
    np.testing.assert_array_equal(np.asarray(again.dense_logits(tokens)), want)
    split = LlamaModel(config, weights=weights, projection_parts=2)      # another layout, same numbers
    np.testing.assert_allclose(np.asarray(split.dense_logits(tokens)), np.asarray(model.dense_logits(tokens)),
                               rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(split.host_weights()[n], w) for n, w in weights.items())
