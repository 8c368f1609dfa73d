"""Shared fixtures. JAX runs on the CPU here, in float32 unless a test says otherwise."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_model():
    from kvlab.models import LlamaModel, ModelConfig

    return LlamaModel(ModelConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M (float32) and its tokenizer, loaded once."""
    import kvlab

    return kvlab.models.load("smollm2-135m")
