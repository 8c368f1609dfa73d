"""Pallas attention kernels vs their peers, side by side in one run (GPU).

    python benchmarks/attention_kernels.py [--only decode,decode32k,decode1b,prefill,mixed,window,write,check]
                                           [--out DIR] [--tune]

Measures, on the device JAX sees: the copy bandwidth ceiling; paged decode (B=64, ctx 4096, Hq 32,
Hkv 8, D 128, page 16, bf16) against JAX's Pallas ``paged_attention`` and cuDNN dense decode;
paged decode at B=4, ctx 32k; ``decode1b``: the Llama-3.2-1B engine's decode (B=256, ctx 384,
D 64); ragged paged prefill (B=4, S=4096, H=32, D=128, causal, KV read from
pages) against JAX's Pallas ``mha`` and cuDNN; a mixed chunked-prefill step against its parts run
separately; decode time against context with and without a sliding window; the KV write kernel
against XLA's scatter. ``check`` compares the kernels with the reference on the device first.
Prints a markdown table; ``--out`` also writes it with the raw numbers (JSON).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from kernel_timing import (
    BF16,
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

from kvlab.attention import AttentionOptions, RaggedBatch, ReferenceAttention
from kvlab.attention.pallas import DecodeConfig, MosaicPrefillConfig, PallasAttention, PrefillConfig
from kvlab.kvcache.storage import PagedKVStorage


def attention_fn(backend, opts):
    """backend(q, storage, layer 0, batch, opts) as a function of arrays only (for ``timed``): one
    layer's ``run`` with its step's ``plan`` (the plan's few jnp ops are timed with it)."""
    return lambda q, store, batch: backend(q, store, 0, batch, opts)


def prefill_name(backend, q, store, opts) -> str:
    """Which prefill kernel (its config class) the backend resolves for this combination."""
    cfg = backend.prefill_kernel(dtype=q.dtype, head_dim=q.shape[2], page_size=store.page_size, options=opts)
    return type(cfg).__name__


def check() -> None:
    """Kernels vs the reference (float32) on the device: relative error and NaN."""
    cases = [dict(hq=32, hkv=8, d=128, page=16, dtype=BF16, opts={}),
             dict(hq=8, hkv=8, d=64, page=8, dtype=jnp.float16, opts={}),
             dict(hq=16, hkv=2, d=256, page=128, dtype=BF16, opts=dict(soft_cap=30.0)),
             dict(hq=12, hkv=4, d=128, page=32, dtype=jnp.float32,
                  opts=dict(sliding_window=100, num_sink_tokens=4)),
             dict(hq=7, hkv=7, d=64, page=64, dtype=BF16, opts=dict(sliding_window=33))]
    for c in cases:
        for lens_q, kv_lens in (([1] * 9, [1, 17, 300, 64, 1000, 5, 2, 129, 700]),
                                ([1, 77, 1, 300, 1], [40, 77, 513, 900, 1]),    # Hopper prefill: persistent
                                ([300, 129], [1000, 129])):                      # Hopper: a CTA per block
            # (the reference gathers every row's pages: no 128-page tables for the long prefills)
            q, store, batch, _ = paged_setup(lens_q, kv_lens, hq=c["hq"], hkv=c["hkv"], d=c["d"],
                                             page=c["page"], dtype=c["dtype"],
                                             page_bucket=128 if len(lens_q) > 2 else None)
            opts = AttentionOptions(sm_scale=c["d"] ** -0.5, **c["opts"])
            for backend in (PallasAttention(), PallasAttention(prefill=PrefillConfig()),
                            PallasAttention(prefill=PrefillConfig(), fuse_mixed=False)):
                out = jax.jit(attention_fn(backend, opts))(q, store, batch)
                f32 = jax.tree.map(lambda a: a.astype(jnp.float32), store)
                with jax.default_matmul_precision("highest"):     # no TF32 in the reference
                    ref = ReferenceAttention()(q.astype(jnp.float32), f32, 0, batch, opts)
                err = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
                bad = bool(jnp.isnan(out).any())
                limit = 1e-5 if c["dtype"] == jnp.float32 else 1e-2
                status = "ok" if err < limit and not bad else "FAIL"
                what = (f"{jnp.dtype(c['dtype']).name} Hq{c['hq']} Hkv{c['hkv']} D{c['d']} P{c['page']} "
                        f"{c['opts']} decode_only={batch.decode_only} "
                        f"prefill={prefill_name(backend, q, store, opts)} "
                        f"fused={backend.fuse_mixed}")
                print(f"  check {what}: rel err {err:.2e} nan={bad} {status}", flush=True)
                ROWS.append(dict(section="check", what=what, ms=0.0, note=f"rel err {err:.2e} {status}"))


# Tile variants timed by ``--tune``: (block_k, num_splits, num_warps, num_stages); num_splits None:
# the heuristic's choice. TUNE_BATCH for shapes whose batch fills the GPU, TUNE_SPLIT for few long
# sequences (split-K).
TUNE_BATCH = [(64, None, 4, 3), (32, None, 4, 3), (32, None, 4, 4)]
TUNE_SPLIT = [(64, 8, 4, 3), (64, 8, 4, 4), (32, 8, 4, 3)]
# Which of head dim and context picks the tiles: 16-token tiles won at D 128, ctx 4096, 64-token
# tiles at D 64, ctx 384 (sections decode_short128: D 128, ctx 384; decode_long64: D 64, ctx 4096).
TUNE_PROBE = [(16, None, 2, 4), (32, None, 4, 4), (64, None, 4, 3)]
# The Llama-3.2-1B engine's decode at batch 256 (D 64, short contexts): every tile size.
TUNE_ENGINE = [(16, None, 2, 4), (16, None, 4, 4), (32, None, 2, 3), (32, None, 4, 3), (32, None, 4, 4),
               (64, None, 4, 2), (64, None, 4, 3), (64, None, 8, 3), (128, None, 4, 2), (128, None, 8, 2)]


def queued(fn, x, *rest, calls: int = 8, rounds: int = 5) -> float:
    """Median seconds per call of ``x = fn(x, *rest)`` chained ``calls`` times in one jitted
    function (no loop, so no per-call host synchronisation: the launches queue back to back and the
    figure is the device's time per call, launch gaps included). Diagnostic beside ``timed``."""
    chain = jax.jit(lambda x, *r: functools.reduce(lambda acc, _: fn(acc, *r), range(calls), x))
    jax.block_until_ready(chain(x, *rest))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        jax.block_until_ready(chain(x, *rest))
        times.append((time.perf_counter() - t) / calls)
    return statistics.median(times)


def decode(ceiling, *, batch_size, ctx, tune, section, hq=32, hkv=8, d=128, variants=None):
    page = 16
    q, store, batch, lists = paged_setup([1] * batch_size, [ctx] * batch_size, hq=hq, hkv=hkv, d=d, page=page)
    opts = AttentionOptions(sm_scale=d ** -0.5)
    kv_bytes = 2 * batch_size * ctx * hkv * d * 2
    # Peer 1: JAX's Pallas paged_attention (its layout: [Hkv, pages, P, D]).
    from jax.experimental.pallas.ops.gpu import paged_attention as jpa
    kp = jnp.transpose(store.k[0], (2, 0, 1, 3))
    vp = jnp.transpose(store.v[0], (2, 0, 1, 3))
    tables = jnp.asarray(np.array(lists, np.int32))
    lengths = jnp.full((batch_size,), ctx, jnp.int32)
    qb = q.reshape(batch_size, hq, d)
    peer = None
    for splits, ppcb in ((16, 8), (8, 8)) if tune else ((16, 8),):
        f = functools.partial(jpa.paged_attention, k_splits=splits, pages_per_compute_block=ppcb)
        try:
            s = record(section, f"JAX Pallas paged_attention k_splits={splits} ppcb={ppcb}",
                       timed(f, qb, kp, vp, tables, lengths), bytes_=kv_bytes, ceiling=ceiling)
        except Exception as e:  # noqa: BLE001 - a peer that does not take the shape is reported
            print(f"  JAX Pallas paged_attention k_splits={splits}: {type(e).__name__}: {e}"[:200])
            continue
        peer = s if peer is None else min(peer, s)
    del kp, vp
    # Peer 2: cuDNN dense decode over contiguous K/V.
    cudnn = None
    try:
        kd, vd = rand(5, (batch_size, ctx, hkv, d)), rand(6, (batch_size, ctx, hkv, d))
        f = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
        cudnn = record(section, "cuDNN dense decode (contiguous KV)", timed(f, qb[:, None], kd, vd),
                       bytes_=kv_bytes, ceiling=ceiling)
        del kd, vd
    except Exception as e:  # noqa: BLE001 - a missing peer is reported, not fatal
        print(f"  cuDNN decode unavailable: {type(e).__name__}: {e}"[:200])
    ref = None
    if tune:     # every variant is checked against the reference (float32) once
        f32 = jax.tree.map(lambda a: a.astype(jnp.float32), store)
        with jax.default_matmul_precision("highest"):
            ref = ReferenceAttention()(q.astype(jnp.float32), f32, 0, batch, opts)
        del f32
    configs = [("kvlab decode, tuned table (decode=None)", PallasAttention())]
    if tune:
        for bk, n, w, st in variants or (TUNE_SPLIT if batch_size * hkv < 132 else TUNE_BATCH):
            cfg = DecodeConfig(block_k=bk, num_splits=n, num_warps=w, num_stages=st)
            configs.append(("kvlab decode", PallasAttention(decode=cfg)))
        configs.append(("kvlab decode, tuned table again", PallasAttention()))     # the spread of a setting
    for name, backend in configs:
        cfg = backend.decode_config(batch, store, head_dim=d)
        splits = backend.num_splits(batch, store, head_dim=d)
        what = f"{name} bk={cfg.block_k} splits={splits} w={cfg.num_warps} st={cfg.num_stages}"
        fn = attention_fn(backend, opts)
        try:
            seconds = timed(fn, q, store, batch)
            note = f"x cuDNN {cudnn / seconds:.3f}" if cudnn else ""
            if ref is not None:
                out = jax.jit(fn)(q, store, batch).astype(jnp.float32)
                err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
                note += f"; rel err {err:.1e}" + ("" if err < 1e-2 else " FAIL")
            record(section, what, seconds, bytes_=kv_bytes, ceiling=ceiling, peer=peer, note=note)
        except Exception as e:  # noqa: BLE001 - one variant that does not compile is reported
            print(f"  {what}: {type(e).__name__}: {e}"[:300], flush=True)
    if tune:     # launches queued back to back: the device's time per call, without the timed loop's
        # per-iteration host round trip (each output is the next call's query)
        try:
            record(section, "back to back: JAX Pallas paged_attention k_splits=16 ppcb=8 (x8)",
                   queued(functools.partial(jpa.paged_attention, k_splits=16, pages_per_compute_block=8), qb,
                          jnp.transpose(store.k[0], (2, 0, 1, 3)), jnp.transpose(store.v[0], (2, 0, 1, 3)),
                          tables, lengths), bytes_=kv_bytes, ceiling=ceiling)
        except Exception as e:  # noqa: BLE001 - a peer that does not take the shape is reported
            print(f"  JAX Pallas paged_attention back to back: {type(e).__name__}: {e}"[:200])
        try:
            kd, vd = rand(5, (batch_size, ctx, hkv, d)), rand(6, (batch_size, ctx, hkv, d))
            f = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
            record(section, "back to back: cuDNN dense decode (x8)", queued(f, qb[:, None], kd, vd),
                   bytes_=kv_bytes, ceiling=ceiling)
            del kd, vd
        except Exception as e:  # noqa: BLE001
            print(f"  cuDNN decode unavailable: {type(e).__name__}: {e}"[:200])
        record(section, "back to back: kvlab decode, tuned table (x8)",
               queued(attention_fn(PallasAttention(), opts), q, store, batch), bytes_=kv_bytes,
               ceiling=ceiling)


def prefill(flops_ceiling, *, tune):
    b, seq, h, d, page = 4, 4096, 32, 128, 16
    q, store, batch, _ = paged_setup([seq] * b, [seq] * b, hq=h, hkv=h, d=d, page=page)
    opts = AttentionOptions(sm_scale=d ** -0.5)
    flops = 2 * b * h * seq * seq * d                      # causal: half of 4 * B * H * S^2 * D
    q4, k4, v4 = (rand(i, (b, seq, h, d)) for i in (11, 12, 13))
    from jax.experimental.pallas.ops.gpu import attention as jattn
    peer = record("prefill", "JAX Pallas mha (dense KV)", timed(
        functools.partial(jattn.mha, segment_ids=None, sm_scale=d ** -0.5, causal=True), q4, k4, v4),
        flops=flops, ceiling=flops_ceiling)
    try:
        f = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation="cudnn")
        record("prefill", "cuDNN dense causal", timed(f, q4, k4, v4), flops=flops, ceiling=flops_ceiling)
    except Exception as e:  # noqa: BLE001
        print(f"  cuDNN prefill unavailable: {type(e).__name__}: {e}"[:200])
    try:       # JAX's FlashAttention-3 kernel on Mosaic GPU (dense KV, float16 only)
        from jax.experimental.pallas.ops.gpu import attention_mgpu as jmgpu
        cfg = jmgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2, causal=True)
        record("prefill", "JAX Pallas Mosaic GPU attention (dense KV, f16)",
               timed(functools.partial(jmgpu.attention, config=cfg),
                     *(x.astype(jnp.float16) for x in (q4, k4, v4))),
               flops=flops, ceiling=flops_ceiling, peer=peer)
    except Exception as e:  # noqa: BLE001
        print(f"  Mosaic GPU attention unavailable: {type(e).__name__}: {e}"[:200])
    del q4, k4, v4
    def hopper(cfg):
        return (f"kvlab Hopper prefill (Mosaic GPU, paged KV) bkv={cfg.block_kv} stages={cfg.stages} "
                f"persistent={cfg.persistent}", cfg)

    def triton(cfg):
        return (f"kvlab Triton prefill (paged KV) bm={cfg.block_m} bk={cfg.block_k} w={cfg.num_warps} "
                f"st={cfg.num_stages}", cfg)

    configs = [hopper(MosaicPrefillConfig()), triton(PrefillConfig())]
    if tune:
        configs += [hopper(MosaicPrefillConfig(persistent=True)),
                    hopper(MosaicPrefillConfig(block_kv=64, stages=3))]
        configs += [triton(PrefillConfig(block_m=m, block_k=k, num_warps=w, num_stages=st))
                    for m, k, w, st in ((64, 64, 4, 3), (128, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 3),
                                        (128, 32, 4, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 32, 4, 3))]
    for what, cfg in configs:
        backend = PallasAttention(prefill=cfg)
        record("prefill", what, timed(lambda q_, s_, b_, be=backend: be.prefill_rows(q_, s_, 0, b_, opts),
                                      q, store, batch), flops=flops, ceiling=flops_ceiling, peer=peer)


def _sub_batch(lists, lens_q, kv_lens, page):
    starts = [k - q for q, k in zip(lens_q, kv_lens)]
    return jax.device_put(RaggedBatch.build(
        q_tokens=[[1] * q for q in lens_q], q_starts=starts, page_lists=lists, page_size=page,
        token_bucket=sum(lens_q), seq_bucket=len(lens_q), page_bucket=max(map(len, lists))))


def mixed(ceiling):
    hq, hkv, d, page, n_dec, chunk = 32, 8, 128, 16, 256, 1536
    lens_q, kv_lens = [chunk] + [1] * n_dec, [chunk + 1024] + [2048] * n_dec
    q, store, batch, lists = paged_setup(lens_q, kv_lens, hq=hq, hkv=hkv, d=d, page=page)
    opts = AttentionOptions(sm_scale=d ** -0.5)
    dec_batch = _sub_batch(lists[1:], lens_q[1:], kv_lens[1:], page)
    pre_batch = _sub_batch(lists[:1], lens_q[:1], kv_lens[:1], page)
    kv_bytes = 2 * sum(kv_lens) * hkv * d * 2
    t_dec = record("mixed", f"decode kernel alone: {n_dec} decodes at ctx 2048",
                   timed(attention_fn(PallasAttention(), opts), q[chunk:], store, dec_batch))
    # (name, prefill kernel, whether it fuses with the decode programs into one launch)
    for name, pre, fuses in (("Hopper (Mosaic GPU)", MosaicPrefillConfig(), False),
                             ("Triton", PrefillConfig(), True)):
        be = PallasAttention(prefill=pre)
        t_pre = record("mixed", f"{name} prefill kernel alone: {chunk}-token chunk after 1024 cached",
                       timed(lambda q_, s_, b_, be=be: be.prefill_rows(q_, s_, 0, b_, opts), q[:chunk], store,
                             pre_batch))
        launches = [("two launches", PallasAttention(prefill=pre, fuse_mixed=False))]
        if fuses:
            launches.insert(0, ("one fused launch", be))
        for how, step_be in launches:
            record("mixed", f"kvlab mixed step, {name} prefill, {how}",
                   timed(attention_fn(step_be, opts), q, store, batch), bytes_=kv_bytes, ceiling=ceiling,
                   peer=t_dec + t_pre, note="x peer: vs its parts run separately")
    record("mixed", "kvlab mixed step, default backend (prefill=None)",
           timed(attention_fn(PallasAttention(), opts), q, store, batch), bytes_=kv_bytes, ceiling=ceiling)


def window(ceiling):
    b, hq, hkv, d, page, w = 8, 32, 8, 128, 16, 1024
    for ctx in (4096, 16384, 65536):
        q, store, batch, _ = paged_setup([1] * b, [ctx] * b, hq=hq, hkv=hkv, d=d, page=page)
        full = AttentionOptions(sm_scale=d ** -0.5)
        t_full = record("window", f"decode B={b} ctx={ctx} full attention",
                        timed(attention_fn(PallasAttention(), full), q, store, batch),
                        bytes_=2 * b * ctx * hkv * d * 2, ceiling=ceiling)
        for sinks in (0, 4):
            opts = AttentionOptions(sm_scale=d ** -0.5, sliding_window=w, num_sink_tokens=sinks)
            record("window", f"decode B={b} ctx={ctx} window={w} sinks={sinks}",
                   timed(attention_fn(PallasAttention(), opts), q, store, batch),
                   peer=t_full, note="x peer: speed-up over full attention")
        del store


def write(ceiling):
    layers, pages, page, hkv, d = 16, 4096, 16, 8, 128
    shape = (layers, pages, page, hkv, d)
    for tokens in (256, 4096):
        slots = jnp.asarray(np.random.default_rng(1).permutation(pages * page)[:tokens].astype(np.int32))
        k_new, v_new = rand(21, (tokens, hkv, d)), rand(22, (tokens, hkv, d))
        moved = 2 * 2 * tokens * hkv * d * 2                    # K and V, read + written
        for name, backend in (("XLA scatter", PallasAttention(kv_write_kernel=False)),
                              ("kvlab Pallas write kernel", PallasAttention())):
            store = PagedKVStorage(k=jnp.zeros(shape, BF16), v=jnp.zeros(shape, BF16))
            record("write", f"{name}: {tokens} tokens into a {layers}-layer cache",
                   chained(lambda st, k, v, s, be=backend: be.write_kv(st, 5, k, v, s),
                           store, k_new, v_new, slots),
                   bytes_=moved, ceiling=ceiling)
            del store


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="check,decode,decode32k,prefill,mixed,window,write")
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--tune", action="store_true", help="also time tile-configuration variants")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    dev = jax.devices()[0]
    print(f"# {dev.device_kind}, JAX {jax.__version__}", flush=True)
    ceiling = copy_bandwidth()
    flops_ceiling = matmul_ceiling()
    sections = dict(check=check,
                    decode=lambda: decode(ceiling, batch_size=64, ctx=4096, tune=args.tune, section="decode"),
                    decode32k=lambda: decode(ceiling, batch_size=4, ctx=32768, tune=args.tune,
                                             section="decode32k"),
                    decode1b=lambda: decode(ceiling, batch_size=256, ctx=384, tune=args.tune,
                                            section="decode1b", d=64, variants=TUNE_ENGINE),
                    decode_short128=lambda: decode(ceiling, batch_size=256, ctx=384, tune=args.tune,
                                                   section="decode_short128", variants=TUNE_PROBE),
                    decode_long64=lambda: decode(ceiling, batch_size=64, ctx=4096, tune=args.tune,
                                                 section="decode_long64", d=64, variants=TUNE_PROBE),
                    prefill=lambda: prefill(flops_ceiling, tune=args.tune),
                    mixed=lambda: mixed(ceiling), window=lambda: window(ceiling),
                    write=lambda: write(ceiling))
    run_sections(sections, only, args.out, "attention_kernels")


if __name__ == "__main__":
    main()
