"""XLA compiler options per step shape (``kvlab.engine.xla_options``): the strategies' choices,
their bad input, and an engine that compiles each step with the options its shape asks for gives
the tokens of one that compiles every step with XLA's defaults."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvlab
import kvlab.engine.runner as runner_module
from kvlab.engine import CommandBuffers, CublasGemmsFrom, XlaDefaults, XlaOptions
from kvlab.engine.xla_options import default_xla_options


@given(threshold=st.integers(1, 4096), tokens=st.integers(1, 8192))
def test_cublas_gemms_from_a_threshold_turns_triton_gemms_off_exactly_at_and_above_it(threshold, tokens):
    options = CublasGemmsFrom(tokens=threshold).for_tokens(tokens)
    assert options == ((("xla_gpu_enable_triton_gemm", False),) if tokens >= threshold else ())
    assert XlaDefaults().for_tokens(tokens) == ()


@pytest.mark.parametrize("bad", [0, -16])
def test_a_threshold_below_one_token_is_refused_with_what_is_allowed(bad):
    with pytest.raises(ValueError, match=r"CublasGemmsFrom.tokens must be >= 1, got"):
        CublasGemmsFrom(tokens=bad)


@given(threshold=st.integers(1, 4096), tokens=st.integers(1, 8192),
       commands=st.lists(st.sampled_from(["FUSION", "CUBLAS", "CUSTOM_CALL", "CUDNN"]), unique=True))
def test_command_buffers_add_their_kinds_to_the_inner_choice(threshold, tokens, commands):
    inner = CublasGemmsFrom(tokens=threshold)
    options = CommandBuffers(inner=inner, commands=tuple(commands)).for_tokens(tokens)
    assert options == inner.for_tokens(tokens) + (("xla_gpu_enable_command_buffer", ",".join(commands)),)
    nested = CommandBuffers(inner=CommandBuffers(inner=inner), commands=tuple(commands))
    assert nested.for_tokens(tokens) == options          # the outer choice of kinds wins, once


@pytest.mark.parametrize("bad, match", [
    (dict(commands="FUSION"), "must be a sequence of XLA command-buffer kinds"),
    (dict(commands=("fusion",)), "upper-case names such as FUSION"),
    (dict(commands=("FUSION ",)), "upper-case names such as FUSION"),
    (dict(commands=("INVALID",)), "upper-case names such as FUSION"),
    (dict(commands=("FUSION", 3)), "must be a sequence of XLA command-buffer kinds"),
    (dict(inner="cublas"), "CommandBuffers.inner must be an XlaOptions"),
])
def test_bad_command_buffer_choices_are_refused_with_what_is_allowed(bad, match):
    with pytest.raises(ValueError, match=match):
        CommandBuffers(**bad)


def test_kinds_given_as_a_list_or_a_generator_are_kept_as_a_tuple():
    """Hashable (the options are part of a compilation's key), and read more than once."""
    assert CommandBuffers(commands=["FUSION", "CUBLAS"]) == CommandBuffers(commands=("FUSION", "CUBLAS"))
    once = CommandBuffers(commands=(c for c in ["FUSION"]))
    assert hash(once) == hash(CommandBuffers(commands=("FUSION",)))
    assert once.for_tokens(1) == once.for_tokens(2) == (("xla_gpu_enable_command_buffer", "FUSION"),)


def test_the_default_is_cublas_from_128_tokens_on_a_gpu_and_xla_defaults_elsewhere():
    assert isinstance(default_xla_options(), XlaOptions)
    on_gpu = jax.default_backend() == "gpu"
    assert default_xla_options() == (CublasGemmsFrom(tokens=128) if on_gpu else XlaDefaults())


@dataclasses.dataclass(frozen=True)
class RecordingOptions:
    """Cublas GEMMs from 32 tokens, with every padded token count it was asked about kept."""

    asked: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def for_tokens(self, tokens: int):
        self.asked.append(tokens)
        return CublasGemmsFrom(tokens=32).for_tokens(tokens)


def _generate(model, xla_options):
    engine = kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=64, page_size=4),
                          scheduler=kvlab.ChunkedScheduler(max_num_seqs=4, max_num_batched_tokens=32,
                                                           max_chunk_tokens=16),
                          xla_options=xla_options)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 255, n).tolist() for n in (3, 17, 9, 30)]
    outs = engine.generate(prompts, kvlab.SamplingParams(max_tokens=6, ignore_eos=True))
    return [c.token_ids for c in outs], engine


def test_steps_compiled_with_their_shapes_options_give_the_default_steps_tokens(tiny_model, monkeypatch):
    expected, _ = _generate(tiny_model, XlaDefaults())
    jitted, compiled_with = runner_module._jitted_step, []

    def recording_jit(options):                   # what each launch compiles with
        compiled_with.append(options)
        return jitted(options)
    monkeypatch.setattr(runner_module, "_jitted_step", recording_jit)
    recording = RecordingOptions()
    got, engine = _generate(tiny_model, recording)
    assert got == expected
    assert compiled_with == [CublasGemmsFrom(tokens=32).for_tokens(t) for t in recording.asked]
    # each launch asked once, with its padded token count: the 32-token prefill steps compiled
    # with cuBLAS GEMMs, the 16-token decode steps with XLA's defaults
    assert len(recording.asked) == engine.runner.steps
    chosen = {CublasGemmsFrom(tokens=32).for_tokens(t) for t in recording.asked}
    assert chosen == {(), (("xla_gpu_enable_triton_gemm", False),)}


def test_steps_recorded_into_command_buffers_give_the_default_steps_tokens(tiny_model):
    """Every kind of command buffer asked for: XLA accepts the option's value when each step
    compiles (it refuses a kind it does not know), and the tokens are the defaults'."""
    expected, _ = _generate(tiny_model, XlaDefaults())
    got, engine = _generate(tiny_model, CommandBuffers(inner=CublasGemmsFrom(tokens=32)))
    assert got == expected and engine.runner.steps > 0
