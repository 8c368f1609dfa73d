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


def check_fp8_device(format_name: str, *, interpret: bool = False) -> None:
    """Raise a ValueError if the default device is an NVIDIA GPU older than compute capability 8.9
    (fp8 conversions need Ada or Hopper); interpret mode and other platforms pass (the platform
    check is ``check_pallas_device``'s)."""
    dev = jax.devices()[0]
    if interpret or dev.platform != "gpu":
        return
    major, minor = (int(x) for x in str(dev.compute_capability).split(".")[:2])
    if (major, minor) < (8, 9):
        raise ValueError(f"the {format_name} KV format needs fp8 conversions, which NVIDIA GPUs have from "
                         f"compute capability 8.9 (Ada, Hopper); this {dev.device_kind} has "
                         f"{dev.compute_capability}: use an int8 or int4 format, or the reference backend")
