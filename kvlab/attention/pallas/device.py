"""What the Pallas backend asks of the device JAX computes on: is it a Hopper GPU (wgmma, TMA),
and how many SMs it has (the split-K heuristic and persistent grids)."""

from __future__ import annotations

import jax


def is_hopper() -> bool:
    """The default device is a GPU of compute capability 9.x (Hopper: wgmma and TMA)."""
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(dev.compute_capability).startswith("9")


def num_sms(default: int = 132) -> int:
    """Streaming multiprocessors of the default GPU (``default`` on any other device: interpret
    mode on a CPU sizes its grids as for an H100)."""
    dev = jax.devices()[0]
    return int(dev.core_count) if dev.platform == "gpu" else default


def check_pallas_device(*, interpret: bool = False, platform: str | None = None) -> None:
    """Raise a ValueError if the Pallas kernels (compiled, ``interpret=False``) cannot run on
    ``platform`` (default: jax's default backend): they are Triton / Mosaic GPU kernels and need
    an NVIDIA GPU. Interpret mode runs anywhere."""
    platform = platform or jax.default_backend()
    if interpret or platform == "gpu":
        return
    raise ValueError(
        f"the Pallas attention kernels need an NVIDIA GPU, and JAX's default backend here is "
        f"{platform!r}; on a CPU use the reference backend (--attention reference, or "
        f"attention=kvlab.ReferenceAttention()) or run the kernels in Pallas interpret mode "
        f"(kvlab.PallasAttention(interpret=True): slow, for tests)")
