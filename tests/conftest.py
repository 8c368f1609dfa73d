"""Shared fixtures. JAX runs on the CPU here, in float32 unless a test says otherwise."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Four fake CPU devices (meshes in the tensor-parallel tests); LLVM at optimization level 1: the
# tiny models' programs compile about 15% faster and the bundled SmolLM2's run no slower (level 0
# compiles faster still but runs SmolLM2 at half speed).
os.environ.setdefault("XLA_FLAGS",
                      "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=1")
# JAX's persistent compilation cache, shared by the worker processes: many tests build engines of
# the same shapes, and a program one test compiled is read back by the next (about 12% of the
# engine tests' time on a 2-core CPU); keys include the JAX version and the flags.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Converted GGUF checkpoints (kvlab.models.converted_cache) beside it: the bundled SmolLM2 is
# parsed and dequantized once for the whole run, not once per process that loads it.
os.environ.setdefault("KVLAB_CACHE_DIR", os.path.join(ROOT, ".kvlab_cache"))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          print_blob=True)
settings.load_profile("ci")

THOROUGH = os.environ.get("KVLAB_THOROUGH") == "1"


def examples(n: int) -> int:
    """Hypothesis examples for the engine-level property tests (each example compiles new step
    shapes, seconds on a CPU): ``n`` with ``KVLAB_THOROUGH=1`` (``make test-thorough``), a fifth
    of it (at least 4) in the default run, which CI runs."""
    return n if THOROUGH else max(4, n // 5)


def _map_count() -> tuple[int, int]:
    """(memory maps this process holds, the kernel's limit vm.max_map_count); (0, 0) off Linux."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except OSError:
        return 0, 0


@pytest.fixture(autouse=True)
def _release_compiled_code():
    """Every executable XLA:CPU compiles holds a few memory maps until it is freed, and a process may
    hold at most ``vm.max_map_count`` (65,530 by default); past it, LLVM segfaults in the middle of a
    compilation. One pytest process compiles thousands of step shapes, so between tests, once the
    maps pass three quarters of the limit, JAX's caches are dropped (later tests recompile what
    they need; no single test adds more than a few thousand maps)."""
    yield
    held, limit = _map_count()
    if held > limit * 3 // 4:
        import jax

        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def tiny_model():
    from kvlab.models import LlamaModel, ModelConfig

    return LlamaModel(ModelConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M (float32) and its tokenizer, loaded once."""
    import kvlab

    return kvlab.models.load("smollm2-135m")
