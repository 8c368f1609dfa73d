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
