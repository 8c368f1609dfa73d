"""The Pallas kernels reading and writing each KV format, side by side in one run (GPU).

    python benchmarks/kv_format_kernels.py [--only check,decode,decode32k,prefill,write] [--out DIR]
                                           [--tune]

Formats: plain bf16, fp8 e4m3 (static scales), int8, int4, int2 (``AsymmetricInt(bits=2)``), on
pages of 16 tokens, and KIVI 2- and 4-bit on pages of 32 tokens (its key groups; every page
sealed, as all but the last page of a long sequence are). On the device JAX sees, after the
copy-bandwidth ceiling:

* ``check``: every kernel (decode, Triton prefill, fused mixed step) against the jnp reference
  reading the same quantized pages, and the KV write kernel against the reference ``write``
  (codes equal, or one step apart where the GPU's float32 division rounds differently);
* ``decode``: paged decode at B=64, ctx 4096 (Hq 32, Hkv 8, D 128, page 16): time, speedup over
  plain bf16 in the same run, bandwidth over the bytes actually read (data and metadata), and
  the seconds the jitted decode took to compile;
  ``decode32k``: B=4, ctx 32k; ``--tune`` also times KV tiles of 32/64/128 tokens per format;
* ``prefill``: the Triton prefill (B=4, S=4096, H=32, D=128, causal, KV from pages) per format,
  against plain bf16 through the same kernel and through the default (Hopper) kernel;
* ``write``: the KV write kernel per format (4096 tokens into a 16-layer cache).

Prints a markdown table; ``--out`` also writes it with the raw rows (JSON).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from kernel_timing import (
    ROWS,
    chained,
    copy_bandwidth,
    matmul_ceiling,
    paged_setup,
    rand,
    record,
    run_sections,
    timed,
)

from kvlab.attention import AttentionOptions, ReferenceAttention
from kvlab.attention.pallas import DecodeConfig, PallasAttention, PrefillConfig
from kvlab.kvcache.formats import (
    PLAIN,
    AsymmetricInt,
    Fp8E4M3,
    Int4,
    Int8,
    Kivi,
    StaticScales,
    bytes_per_token,
)
from kvlab.kvcache.kivi_storage import KiviPagedKVStorage
from kvlab.kvcache.quantized_storage import paged_storage


def rows_encoded(store, fmt):
    """The plain storage's K/V (layer 0, every slot) written into a fresh storage of ``fmt``."""
    if fmt == PLAIN:
        return store
    _, pages, page, hkv, d = store.k.shape
    out = paged_storage(fmt, num_layers=1, num_pages=pages, page_size=page, num_kv_heads=hkv, head_dim=d,
                        dtype=store.k.dtype)
    slots = jnp.arange(pages * page, dtype=jnp.int32)
    return jax.jit(lambda o, k, v: o.write(0, k, v, slots))(out, store.k[0].reshape(-1, hkv, d),
                                                            store.v[0].reshape(-1, hkv, d))


def pages_sealed(store, fmt):
    """The plain storage's pages, every one sealed into a fresh KIVI storage of ``fmt``."""
    _, pages, page, hkv, d = store.k.shape
    out = KiviPagedKVStorage.zeros(fmt, num_layers=1, num_pages=pages, page_size=page, num_kv_heads=hkv,
                                   head_dim=d, dtype=store.k.dtype)
    return jax.jit(lambda o, k, v: o.sealed_from(k, v))(out, store.k, store.v)


class Case(NamedTuple):
    """A format, the page size its cache uses and how a plain storage's K/V are put into it."""

    fmt: object
    page: int
    encode: Callable


FP8 = Fp8E4M3(scales=StaticScales(k=0.02, v=0.02))
PER_TOKEN = [Case(fmt, 16, rows_encoded) for fmt in (PLAIN, FP8, Int8(), Int4(), AsymmetricInt(bits=2))]
FORMATS = PER_TOKEN + [Case(Kivi(bits=bits, group_size=32), 32, pages_sealed) for bits in (2, 4)]


def encoded(case: Case, setup):
    """``setup(page)`` -> (q, plain storage, batch, lists), its storage encoded for ``case``."""
    q, plain, batch, _ = setup(case.page)
    return q, case.encode(plain, case.fmt), batch


def read_bytes(fmt, *, tokens: int, hkv: int, d: int) -> int:
    """Bytes of K and V (data and metadata) a decode over ``tokens`` tokens reads."""
    return tokens * bytes_per_token(fmt, num_layers=1, num_kv_heads=hkv, head_dim=d, model_dtype=jnp.bfloat16)


def reference(q, store, batch, opts):
    with jax.default_matmul_precision("highest"):
        return jax.jit(lambda q_, s_, b_: ReferenceAttention()(q_, s_, 0, b_, opts))(q, store, batch)


def rel_err(out, ref) -> float:
    out, ref = out.astype(jnp.float32), ref.astype(jnp.float32)
    return float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))


def check() -> None:
    """Kernels vs the reference on the same quantized pages; the write kernel vs ``write``."""
    opts = AttentionOptions(sm_scale=128 ** -0.5)
    for lens_q, kv_lens in (([1] * 9, [1, 17, 300, 64, 1000, 5, 2, 129, 700]),
                            ([1, 77, 1, 300, 1], [40, 77, 513, 900, 1])):
        setup = functools.partial(paged_setup, lens_q, kv_lens, hq=32, hkv=8, d=128, page_bucket=64)
        for case in FORMATS:
            fmt = case.fmt
            q, store, batch = encoded(case, lambda page, setup=setup: setup(page=page))
            ref = reference(q, store, batch, opts)
            for backend in (PallasAttention(prefill=PrefillConfig()),
                            PallasAttention(prefill=PrefillConfig(), fuse_mixed=False)):
                out = jax.jit(lambda q_, s_, b_, be=backend: be(q_, s_, 0, b_, opts))(q, store, batch)
                err, nan = rel_err(out, ref), bool(jnp.isnan(out).any())
                status = "ok" if err < 1e-2 and not nan else "FAIL"
                what = f"{fmt.name} decode_only={batch.decode_only} fused={backend.fuse_mixed}"
                print(f"  check {what}: rel err {err:.2e} nan={nan} {status}", flush=True)
                ROWS.append(dict(section="check", what=what, ms=0.0, note=f"rel err {err:.2e} {status}"))
    _, plain, _, _ = paged_setup([1], [4096], hq=32, hkv=8, d=128, page=16)
    for case in PER_TOKEN[1:]:                 # KIVI writes plain rows into staging pages
        check_write(case.encode(plain, case.fmt))


def check_write(empty, tokens: int = 300) -> None:
    """The write kernel against ``write`` on ``empty``: largest difference per array (codes for
    uint8 arrays) and the relative error of the decoded pages."""
    rng = np.random.default_rng(2)
    slots = jnp.asarray(rng.permutation(empty.num_pages * empty.page_size)[:tokens].astype(np.int32))
    new = (slots.at[7].set(-1), rand(31, (tokens, 8, 128)), rand(32, (tokens, 8, 128)))
    kernel = jax.jit(lambda s_, sl, k, v: PallasAttention().write_kv(s_, 0, k, v, sl))(empty, *new)
    ref = jax.jit(lambda s_, sl, k, v: s_.write(0, k, v, sl))(empty, *new)
    diffs = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
             for a, b in zip(kernel.arrays, ref.arrays)]
    pages = jnp.arange(empty.num_pages)
    err = rel_err(kernel.gather_pages(0, pages)[0], ref.gather_pages(0, pages)[0])
    status = "ok" if err < 1e-2 else "FAIL"
    what = f"{empty.kv_format.name} write kernel vs write()"
    print(f"  check {what}: max diff per array {diffs}, decoded rel err {err:.2e} {status}", flush=True)
    ROWS.append(dict(section="check", what=what, ms=0.0, note=f"diffs {diffs}; rel err {err:.1e} {status}"))


def compile_seconds(fn, *args) -> float:
    """Seconds to lower and compile ``jax.jit(fn)`` for ``args`` (the kernel's build, alone)."""
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - start


def decode(ceiling, *, batch_size: int, ctx: int, tune: bool, section: str) -> None:
    hq, hkv, d = 32, 8, 128
    lens = [1] * batch_size, [ctx] * batch_size
    setup = functools.cache(lambda page: paged_setup(*lens, hq=hq, hkv=hkv, d=d, page=page))
    opts = AttentionOptions(sm_scale=d ** -0.5)
    base = None
    for case in FORMATS:
        fmt = case.fmt
        q, store, batch = encoded(case, setup)
        configs = [("tuned table", PallasAttention())]
        if tune and case.encode is rows_encoded:         # KIVI's tiles are its pages
            configs += [(f"bk={bk}", PallasAttention(decode=DecodeConfig(block_k=bk)))
                        for bk in (32, 64, 128)]
        for name, backend in configs:
            cfg = backend.decode_config(batch, store, head_dim=d)
            splits = backend.num_splits(batch, store, head_dim=d)
            what = (f"{fmt.name} decode, {name} (bk={cfg.block_k} splits={splits} "
                    f"w={cfg.num_warps} st={cfg.num_stages})")
            call = functools.partial(lambda q_, s_, b_, be: be(q_, s_, 0, b_, opts), be=backend)
            try:
                compile_s = compile_seconds(call, q, store, batch)
                seconds = timed(call, q, store, batch)
            except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported
                print(f"  {what}: {type(e).__name__}: {e}"[:400], flush=True)
                continue
            base = seconds if base is None else base
            record(section, what, seconds, bytes_=read_bytes(fmt, tokens=batch_size * ctx, hkv=hkv, d=d),
                   ceiling=ceiling, peer=base,
                   note=f"x peer: plain bf16, tuned table; compile {compile_s:.0f} s")
        del store


def prefill(flops_ceiling) -> None:
    b, seq, h, d = 4, 4096, 32, 128
    setup = functools.cache(lambda page: paged_setup([seq] * b, [seq] * b, hq=h, hkv=h, d=d, page=page))
    opts = AttentionOptions(sm_scale=d ** -0.5)
    flops = 2 * b * h * seq * seq * d
    base = None
    for case in FORMATS:
        fmt = case.fmt
        q, store, batch = encoded(case, setup)
        backends = [("Triton prefill", PallasAttention(prefill=PrefillConfig()))]
        if fmt == PLAIN:
            backends.append(("default prefill (Hopper kernel)", PallasAttention()))
        for name, backend in backends:
            seconds = timed(lambda q_, s_, b_, be=backend: be.prefill_rows(q_, s_, 0, b_, opts),
                            q, store, batch)
            base = seconds if base is None else base
            record("prefill", f"{fmt.name} KV, {name}", seconds, flops=flops, ceiling=flops_ceiling,
                   peer=base, note="x peer: plain bf16 through the Triton prefill")
        del store


def write(ceiling) -> None:
    layers, pages, page, hkv, d, tokens = 16, 4096, 16, 8, 128, 4096
    slots = jnp.asarray(np.random.default_rng(1).permutation(pages * page)[:tokens].astype(np.int32))
    k_new, v_new = rand(21, (tokens, hkv, d)), rand(22, (tokens, hkv, d))
    for fmt in (case.fmt for case in PER_TOKEN):
        store = paged_storage(fmt, num_layers=layers, num_pages=pages, page_size=page, num_kv_heads=hkv,
                              head_dim=d, dtype=jnp.bfloat16)
        moved = 2 * tokens * hkv * d * 2 + read_bytes(fmt, tokens=tokens, hkv=hkv, d=d)  # bf16 in, fmt out
        seconds = chained(lambda st, k, v, s: PallasAttention().write_kv(st, 5, k, v, s),
                          store, k_new, v_new, slots)
        record("write", f"{fmt.name}: {tokens} tokens into a {layers}-layer cache", seconds,
               bytes_=moved, ceiling=ceiling)
        del store


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="check,decode,decode32k,prefill,write")
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--tune", action="store_true", help="also time KV tiles of 32/64/128 tokens")
    parser.add_argument("--formats", default=None,
                        help="comma-separated format names (plain,fp8-e4m3fn,int8,int4,int2,kivi2,kivi4); "
                             "default: all")
    args = parser.parse_args(argv)
    if args.formats:
        FORMATS[:] = [c for c in FORMATS if c.fmt.name in args.formats.split(",")]
    only = set(args.only.split(","))
    dev = jax.devices()[0]
    print(f"# {dev.device_kind}, JAX {jax.__version__}", flush=True)
    ceiling = copy_bandwidth()
    sections = dict(check=check,
                    decode=lambda: decode(ceiling, batch_size=64, ctx=4096, tune=args.tune, section="decode"),
                    decode32k=lambda: decode(ceiling, batch_size=4, ctx=32768, tune=args.tune,
                                             section="decode32k"),
                    prefill=lambda: prefill(matmul_ceiling()), write=lambda: write(ceiling))
    run_sections(sections, only, args.out, "kv_format_kernels")


if __name__ == "__main__":
    main()
