"""Timing helpers shared by the kernel benchmarks: a results table, a median timer, random paged
KV setups and the copy-bandwidth ceiling."""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kvlab.attention import RaggedBatch
from kvlab.kvcache.storage import PagedKVStorage

BF16 = jnp.bfloat16
ROWS: list[dict] = []


def timed(fn, *args, reps: int = 20, rounds: int = 5) -> float:
    """Median seconds per call of ``fn(*args)`` (arrays or pytrees of arrays), timed on the device:
    ``reps`` calls run inside one jitted loop (an optimization barrier keeps XLA from hoisting the
    call out of it), so host dispatch cost stays out of the figure."""

    @jax.jit
    def loop(*a):
        def body(i, acc):
            _, a_i = jax.lax.optimization_barrier((i, a))
            first = jax.tree.leaves(fn(*a_i))[0]
            return acc + first.ravel()[0].astype(jnp.float32)
        return jax.lax.fori_loop(0, reps, body, jnp.float32(0))

    return median_wall_time(lambda: loop(*args), reps, rounds)


def chained(fn, state, *args, reps: int = 20, rounds: int = 5) -> float:
    """Median seconds per call of ``state = fn(state, *args)``, ``reps`` calls in one jitted loop
    with the state as the loop carry (updated in place)."""

    @functools.partial(jax.jit, donate_argnums=0)
    def loop(st, *a):
        def body(i, st):
            _, a_i = jax.lax.optimization_barrier((i, a))
            return fn(st, *a_i)
        return jax.lax.fori_loop(0, reps, body, st)

    holder = [loop(state, *args)]

    def run():
        holder[0] = loop(holder[0], *args)
        return holder[0]
    return median_wall_time(run, reps, rounds)


def median_wall_time(run, reps: int, rounds: int) -> float:
    """Median over ``rounds`` of the wall seconds of ``run()`` to completion (its results
    awaited), divided by ``reps`` (the calls ``run`` makes); one untimed call first."""
    jax.block_until_ready(run())
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        jax.block_until_ready(run())
        out.append((time.perf_counter() - t) / reps)
    return statistics.median(out)


def record(section, what, seconds, *, bytes_=None, flops=None, ceiling=None, peer=None, note=""):
    row = dict(section=section, what=what, ms=seconds * 1e3, note=note)
    if bytes_:
        row["TB/s"] = bytes_ / seconds / 1e12
        if ceiling:
            row["% ceiling"] = 100 * row["TB/s"] / ceiling
    if flops:
        row["TFLOP/s"] = flops / seconds / 1e12
        if ceiling:
            row["% ceiling"] = 100 * row["TFLOP/s"] / ceiling
    if peer:
        row["x peer"] = peer / seconds
    ROWS.append(row)
    shown = ("TB/s", "TFLOP/s", "% ceiling", "x peer")
    print(f"  {section:10s} {what:48s} {seconds * 1e3:9.3f} ms  " +
          "  ".join(f"{k}={v:.3g}" for k, v in row.items() if k in shown), flush=True)
    return seconds


def rand(key, shape, dtype=BF16):
    return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32).astype(dtype)


def paged_setup(lens_q, kv_lens, *, hq, hkv, d, page, dtype=BF16, seed=0, page_bucket=None):
    """A storage with random K/V, pages of all sequences in random order, and the ragged batch."""
    rng = np.random.default_rng(seed)
    n_pages = [-(-k // page) for k in kv_lens]
    total = sum(n_pages) + 1
    perm = rng.permutation(total - 1) + 1
    lists, at = [], 0
    for n in n_pages:
        lists.append(perm[at:at + n].tolist())
        at += n
    starts = [k - q for q, k in zip(lens_q, kv_lens)]
    t = sum(lens_q)
    batch = RaggedBatch.build(q_tokens=[[1] * q for q in lens_q], q_starts=starts, page_lists=lists,
                              page_size=page, token_bucket=t, seq_bucket=len(lens_q),
                              page_bucket=page_bucket or max(n_pages))
    batch = jax.device_put(batch)
    shape = (1, total, page, hkv, d)
    store = PagedKVStorage(k=rand(seed + 1, shape, dtype), v=rand(seed + 2, shape, dtype))
    q = rand(seed + 3, (t, hq, d), dtype)
    return q, store, batch, lists


def host_timed(fn, *args, reps: int = 10, rounds: int = 5) -> float:
    """Median seconds per call, calls queued back to back from the host (for kernels long enough
    that dispatch hides behind them, and for elementwise work a device loop would simplify away)."""
    f = jax.jit(fn)

    def run():
        for _ in range(reps):
            out = f(*args)
        return out
    return median_wall_time(run, reps, rounds)


def copy_bandwidth() -> float:
    x = rand(9, (512 * 1024 * 1024,))                                     # 1 GiB of bf16
    s = host_timed(lambda a: a * 1.0009765625, x)
    record("ceiling", "copy (read + write) 1 GiB", s, bytes_=2 * x.nbytes)
    del x
    return 2 * 512 * 1024 * 1024 * 2 / s / 1e12


def matmul_ceiling() -> float:
    a, b = rand(7, (8192, 8192)), rand(8, (8192, 8192))
    s = host_timed(lambda x, y: x @ y, a, b)
    record("ceiling", "bf16 matmul 8192^3", s, flops=2 * 8192 ** 3)
    return 2 * 8192 ** 3 / s / 1e12


def run_sections(sections: dict, only: set[str], out, name: str) -> None:
    """Run the sections named in ``only`` (a failing one is reported and the others go on), print
    the ``ROWS`` table, write it with the raw rows to ``out`` (``name``.md and .json) when given,
    and exit non-zero naming the sections that failed."""
    import json
    import sys
    import traceback

    from kvlab.bench.report import markdown_table

    failed = []
    for section, run in sections.items():
        if section in only:
            try:
                run()
            except Exception:  # noqa: BLE001 - report and go on with the other sections
                failed.append(section)
                print(f"  section {section} failed:\n{traceback.format_exc()[-3000:]}", flush=True)
    cols = ["section", "what", "ms", "TB/s", "TFLOP/s", "% ceiling", "x peer", "note"]
    table = markdown_table([{c: r.get(c, "") for c in cols} for r in ROWS])
    print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        dev = jax.devices()[0]
        (out / f"{name}.md").write_text(f"{dev.device_kind}, JAX {jax.__version__}\n\n{table}\n")
        (out / f"{name}.json").write_text(json.dumps(ROWS, indent=1))
    if failed:
        sys.exit(f"sections failed: {', '.join(failed)}")
