"""The copies of a tier load, apart from the engine: a 32k-token document's 2048 page records
moved from a ``PinnedHostTier`` to the device (``load_records``) with the tier's banks of several
sizes, whole-bank copies on and off, and the device write of the loaded records into the KV
storage (``kvlab.engine.page_copies.write_pages``: all of them, a bank's rows, or a few rows of
an array laid out as the load), for the Llama-3.2-1B and Llama-3-8B shapes.

    python benchmarks/tier_copies.py [--shapes llama-3.2-1b llama-3-8b] [--pages 2048]

Each figure is the median of synchronised repetitions after one untimed call (compilation), with
the host's share of a load (the time ``load_records`` takes to return). The ceiling is the
host-to-device bandwidth of the link (``benchmarks/tier_replay.py`` measures it in the same way,
one 1 GiB pinned array).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from kernel_timing import median_wall_time

from kvlab.engine import page_copies
from kvlab.kvcache.storage import PagedKVStorage
from kvlab.kvcache.tiers import PinnedHostTier
from kvlab.kvcache.tiers.moves import Load, make_moves

SHAPES = {"llama-3.2-1b": (16, 8, 64), "llama-3-8b": (32, 8, 128)}     # layers, KV heads, head dim
PAGE = 16
# MiB, whole-bank share (2: slices only, 0.01: whole banks only)
BANKS = ((2048, 2.0), (2048, 7 / 8), (2048, 0.01), (1024, 7 / 8), (512, 7 / 8), (256, 7 / 8))


def storage_and_pages(layers, heads, dim, n):
    """A one-element list holding a KV storage of 1.25 n pages, and ``n`` random distinct pages."""
    num_pages = n * 5 // 4 + 40
    holder = [PagedKVStorage.zeros(num_layers=layers, num_pages=num_pages, page_size=PAGE, num_kv_heads=heads,
                                   head_dim=dim, dtype=jnp.bfloat16)]
    return holder, np.random.default_rng(0).permutation(num_pages)[:n].tolist()


def device_write(layers, heads, dim, n, reps) -> float:
    """``write_pages`` of ``n`` records into random distinct pages of a storage of 1.25 n pages."""
    holder, pages = storage_and_pages(layers, heads, dim, n)
    data = jnp.ones((n, layers, 2, PAGE, heads, dim), jnp.bfloat16)

    def write():
        holder[0] = page_copies.write_pages(holder[0], pages, data)
        return holder[0]
    return 1e3 * median_wall_time(write, 1, reps)


def rows_write(layers, heads, dim, n, rows, wanted, reps) -> float:
    """``write_pages`` of ``wanted`` rows of an array of ``rows`` records (a tier's piece: a
    bank, or the load's own layout) into random distinct pages."""
    holder, pages = storage_and_pages(layers, heads, dim, n)
    data = jnp.ones((rows, layers, 2, PAGE, heads, dim), jnp.bfloat16)
    picked = np.random.default_rng(1).permutation(rows)[:wanted]

    def write():
        holder[0] = page_copies.write_pages(holder[0], pages[:wanted], data, rows=picked)
        return holder[0]
    return 1e3 * median_wall_time(write, 1, reps)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    ap.add_argument("--pages", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}")
    print("| shape | copy | banks | ascending slots | descending slots | load and device write, as the engine"
          " |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes:
        layers, heads, dim = SHAPES[shape]
        n = args.pages
        gb = n * layers * 2 * PAGE * heads * dim * 2 / 1e9
        ms = device_write(layers, heads, dim, n, args.reps)
        print(f"| {shape} | device write of {gb:.2f} GB | | {ms:.2f} ms ({gb / ms * 1e3:.0f} GB/s) | |",
              flush=True)
        bank_rows = (1 << 30) // (layers * 2 * PAGE * heads * dim * 2)
        for rows, wanted in ((min(bank_rows, n), min(bank_rows, n)), (n, 1), (n, 16),
                             (n, page_copies.FEW_ROWS), (n, page_copies.FEW_ROWS + 1)):
            ms = rows_write(layers, heads, dim, n, rows, wanted, args.reps)
            print(f"| {shape} | device write of {wanted} rows of an array of {rows} | | {ms:.2f} ms | |",
                  flush=True)
        record = jax.ShapeDtypeStruct((layers, 2, PAGE, heads, dim), jnp.bfloat16)
        for bank_mib, share in BANKS:
            tier = PinnedHostTier(num_pages=n + 64, page_record=record, bank_bytes=bank_mib << 20,
                                  whole_bank_share=share)
            cells = [load_ms(tier, slots, gb, args.reps) for slots in (range(n), range(n - 1, -1, -1))]
            cells.append(load_and_write_ms(tier, storage_and_pages(layers, heads, dim, n), gb, args.reps))
            how = ("slices only" if share > 1 else "whole banks only" if share < 0.1
                   else "whole banks and slices")
            print(f"| {shape} | load of {gb:.2f} GB, {how} | {bank_mib} MiB | " + " | ".join(cells) + " |",
                  flush=True)
            del tier


def load_ms(tier, slots, gb: float, reps: int) -> str:
    """The time of ``tier.load_records(slots)``, its bandwidth and the host's share (how long the
    call took to return: the rest of the copy runs while the host goes on), as a table cell."""
    slots = list(slots)
    ms = 1e3 * median_wall_time(lambda: tier.load_records(slots), 1, reps)
    host = []
    for _ in range(reps):
        start = time.perf_counter()
        out = tier.load_records(slots)
        host.append(time.perf_counter() - start)
        jax.block_until_ready(out)
    return f"{ms:.1f} ms ({gb / ms * 1e3:.1f} GB/s; host {1e3 * float(np.median(host)):.1f} ms)"


def load_and_write_ms(tier, holder_and_pages, gb: float, reps: int) -> str:
    """The time of a load of the tier's first ``len(pages)`` slots through ``make_moves`` into
    ``pages`` of the storage (the engine's path: ``load_pieces``, then one device write per
    piece), synchronised, as a table cell."""
    holder, pages = holder_and_pages
    moves = [Load(0, slot, page) for slot, page in enumerate(pages)]

    def write(pages, data, rows=None):
        holder[0] = page_copies.write_pages(holder[0], pages, data, rows=rows)

    def load_and_write():
        make_moves(moves, [tier], read_device=None, write_device=write)
        return holder[0]
    ms = 1e3 * median_wall_time(load_and_write, 1, reps)
    return f"{ms:.1f} ms ({gb / ms * 1e3:.1f} GB/s)"


if __name__ == "__main__":
    main()
