"""Do host-to-device copies run beside the compute that does not need them? The question a
layer-streamed load (a tier's KV, or weights, arriving layer by layer while earlier layers
compute) depends on, measured three ways on the default device:

* ``apart``: the copies alone (every layer's buffer from pinned host memory to the device), then
  the compute alone (one jitted call a layer, each reading its own layer's buffer);
* ``separate calls``: every copy issued first (``jax.device_put`` returns at once), then the
  layer calls in order: call ``l`` waits for copy ``l`` only, if the runtime lets it;
* ``inside one jit``: one jitted function that takes the pinned buffers and moves each to the
  device right before its layer (XLA's own scheduling of the copies).

Overlap is reported as the share of the shorter phase hidden: 1 when the two together take as
long as the longer one, 0 when they take the sum.

    python benchmarks/host_link_overlap.py [--layers 32] [--layer-mb 128] [--compute-ms 1.0]
                                           [--reps 5]

The compute of a layer is a chain of bf16 matrix products sized so that a layer takes about
``--compute-ms`` on its own (measured first); each layer's result depends on its buffer (a sum of
a slice of it), so no call can run before its copy has arrived.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding
from kernel_timing import median_wall_time


def layer_body(x, w, buffer, *, reps: int):
    """A layer: ``reps`` products of ``x [n, n]`` with ``w``, after a read of ``buffer``."""
    n = x.shape[0]
    x = x + buffer[:n * n].reshape(n, n).astype(x.dtype) * 0
    return jax.lax.fori_loop(0, reps, lambda _, y: jnp.tanh(y @ w), x)


def layer_compute(reps: int):
    """``layer_body`` jitted: one call a layer."""
    return jax.jit(functools.partial(layer_body, reps=reps))


def calibrate(target_ms: float, x, w, buffer) -> int:
    """Products per layer call so that one call takes about ``target_ms``."""
    reps = 8
    layer = layer_compute(reps)      # made once: a new jit per call would time its compilation
    one = 1e3 * median_wall_time(lambda: layer(x, w, buffer), 1, 3)
    return max(1, round(reps * target_ms / max(one, 1e-3)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--layer-mb", type=float, default=128.0, help="bytes copied per layer (MiB)")
    ap.add_argument("--compute-ms", type=float, default=1.0, help="compute per layer (ms)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    dev = jax.devices()[0]
    device, pinned = SingleDeviceSharding(dev), SingleDeviceSharding(dev, memory_kind="pinned_host")
    count = int(args.layer_mb * 2 ** 20) // 2
    host = [jax.device_put(np.full(count, i, np.uint16).view(jnp.bfloat16), pinned)
            for i in range(args.layers)]
    n = 2048
    x = jax.device_put(jnp.ones((n, n), jnp.bfloat16) / n, device)
    w = jax.device_put(jnp.eye(n, dtype=jnp.bfloat16), device)
    resident = [jax.device_put(h, device) for h in host]
    reps = calibrate(args.compute_ms, x, w, resident[0])
    layer = layer_compute(reps)

    def copies():
        jax.block_until_ready([jax.device_put(h, device) for h in host])

    def compute():
        jax.block_until_ready([layer(x, w, b) for b in resident])

    def separate_calls():
        loaded = [jax.device_put(h, device) for h in host]       # all issued, none awaited
        jax.block_until_ready([layer(x, w, b) for b in loaded])

    @jax.jit
    def one_jit(x, w, buffers):
        return [layer_body(x, w, jax.device_put(b, device), reps=reps) for b in buffers]

    t_copy, t_compute = (1e3 * median_wall_time(f, 1, args.reps) for f in (copies, compute))
    t_separate = 1e3 * median_wall_time(separate_calls, 1, args.reps)
    try:
        t_jit = 1e3 * median_wall_time(lambda: one_jit(x, w, host), 1, args.reps)
    except Exception as e:       # a JAX without host buffers as jit arguments on this device
        t_jit = float("nan")
        print(f"inside one jit: {type(e).__name__}: {str(e)[:200]}")
    moved = args.layers * count * 2
    print(f"device {dev.device_kind}, JAX {jax.__version__}; {args.layers} layers of {args.layer_mb:.0f} MiB "
          f"({moved / 1e9:.2f} GB), {reps} products of {n}x{n} a layer")
    print("| run | ms | overlap of the shorter phase |")
    print("|---|---|---|")
    longer, shorter = max(t_copy, t_compute), min(t_copy, t_compute)
    print(f"| copies alone ({moved / t_copy / 1e6:.1f} GB/s) | {t_copy:.1f} | |")
    print(f"| compute alone | {t_compute:.1f} | |")
    for name, t in (("copies issued first, then the layer calls", t_separate), ("inside one jit", t_jit)):
        hidden = (t_copy + t_compute - t) / shorter if shorter > 0 else float("nan")
        print(f"| {name} | {t:.1f} | {hidden:.2f} (1: {longer:.1f} ms; 0: {t_copy + t_compute:.1f} ms) |")


if __name__ == "__main__":
    main()
