"""Ragged paged prefill on Hopper: Pallas with the Mosaic GPU lowering (TMA copies, wgmma,
warp specialization).

The FlashAttention-3 structure, with K/V read from pages: a CTA holds three warpgroups. Two
compute warpgroups own ``block_q`` query tokens each (one query head); the third is a producer
that reads the step plan, looks up the page table and copies each KV tile of ``block_kv`` tokens
into a ring of ``stages`` shared-memory slots, one TMA copy per page (or per ``block_kv`` rows of
a page larger than the tile), all landing on the slot's barrier. The compute warpgroups take turns
on the tensor cores (a shared "schedule" barrier), so one's softmax overlaps the other's matmuls.

Causal with the ``kv_len - q_len + i`` alignment: tiles below a warpgroup's first query position
run without mask arithmetic, the tiles after it are masked, and tiles past its last position are
never computed (their slots are released at once). Rows are written through a staging buffer:
a whole ``block_q`` rows in one TMA store, the last rows of a sequence one row per store, so no
row of another sequence is ever touched. Programs left idle by the plan zero the padding rows.

What this kernel does not serve (``hopper.unsupported_reason`` names it) goes to the
Triton kernels: float32 (wgmma would round to tf32), head dims other than 64 and 128, page sizes
below 8 or that do not tile ``block_kv``, sliding windows and attention sinks. Its tiles and its
place in a step are ``hopper.MosaicPrefillConfig``; this module, which imports the Mosaic
GPU lowering, is imported only when such a step is traced.
"""

from __future__ import annotations

import functools
import math
from typing import Protocol

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.mosaic.gpu import LoweringSemantics
from jax.experimental.pallas import mosaic_gpu as plgpu

from kvlab.attention.pallas.config import COMPUTE_WGS

LOG2E = 1.4426950408889634
LANE = LoweringSemantics.Lane      # layouts per op (the dialect's layout inference rejects this kernel)


class MosaicTiles(Protocol):
    """The tiles the kernel runs with (``hopper.MosaicPrefillConfig`` has them): ``block_q`` query
    rows per compute warpgroup, ``cta_rows`` per CTA, KV tiles of ``block_kv`` tokens in a ring
    of ``stages`` slots; ``persistent``: one CTA per SM looping over the work (None: chosen from
    the shapes)."""

    block_q: int
    block_kv: int
    stages: int
    persistent: bool | None

    @property
    def cta_rows(self) -> int: ...


def _tile_copies(config, page_size: int):
    """(tokens per TMA copy, copies per KV tile)."""
    per_copy = min(page_size, config.block_kv)
    return per_copy, config.block_kv // per_copy


@functools.partial(jax.jit, static_argnames=("layout", "options", "config", "num_ctas", "interpret"))
def ragged_prefill(q, kv_arrays, cu_q_lens, kv_lens, page_table, meta, plan, *, layout, options,
                   config: MosaicTiles, num_ctas: int = 132, interpret=False):
    """Rows of the sequences with more than one query token; q: [T, Hq, D]; kv_arrays: the
    storage's arrays (``layout.tma_arrays``); meta: [3] int32 (layer, num_seqs, plan blocks);
    plan: (seq [G], q_first [G]), the work list of ``config.work`` (blocks of ``config.cta_rows``).
    Returns [T, Hq, D]: padding rows zeros, rows of single-token sequences unwritten (the decode
    kernel writes them in place). Jitted, so the layers of a step share one lowering and one
    compiled module (per layer, a 16-layer step spent about 25 s lowering and compiling it)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = layout.num_kv_heads
    group = num_q_heads // num_kv_heads
    bq, bk, stages = config.block_q, config.block_kv, config.stages
    per_copy, copies = _tile_copies(config, layout.page_size)
    page_size = layout.page_size
    max_pages = page_table.shape[1]
    seq_plan, first_plan = plan
    num_programs = seq_plan.shape[0]
    dtype = q.dtype
    n_kv = len(kv_arrays)
    persistent = config.persistent
    if persistent is None:
        persistent = kv_lens.shape[0] > math.ceil(num_tokens / config.cta_rows)
    grid = max(1, min(num_ctas, num_programs * num_q_heads) if persistent else num_programs * num_q_heads)
    scale = options.sm_scale * LOG2E
    soft_cap = options.soft_cap

    pad = -num_tokens % 8          # a TMA box over tiled rows needs the row count a multiple of 8
    if interpret:                  # the interpreter raises on the rows a TMA box reads past the end
        pad += bq

    def cast(x, layout_):      # register layouts mean nothing to the interpreter
        return x if interpret else plgpu.layout_cast(x, layout_)

    def iota(dim):
        if interpret:
            return lax.broadcasted_iota(jnp.int32, (bq, bk), dim)
        return plgpu.broadcasted_iota(jnp.int32, (bq, bk), dim, layout=plgpu.Layout.WGMMA)

    def body(q_ref, cu_ref, kv_len_ref, pt_ref, seq_ref, first_ref, meta_ref, *refs):
        kv_refs, o_ref = refs[:n_kv], refs[n_kv]
        (q_smem, k_smem, v_smem, o_smem, k_full, v_full, q_full, k_free, v_free, turn) = refs[n_kv + 1:]
        cta = lax.axis_index("cta")
        wg = lax.axis_index("wg")
        layer, num_seqs, total = meta_ref[0], meta_ref[1], meta_ref[2]
        pad_start = cu_ref[num_seqs]
        # Work items (plan block, query head), heads fastest: the plan's blocks first (heaviest
        # first), then blocks of padding rows to zero. Round k gives item k * G + c to CTA c on
        # even rounds and to CTA G - 1 - c on odd ones (a snake: each CTA gets heavy and light items).
        num_items = (total + pl.cdiv(num_tokens - pad_start, 2 * bq)) * num_q_heads

        def snake_slot(k):
            return jnp.where(lax.rem(k, 2) == 0, cta, grid - 1 - cta)

        rounds = lax.div(num_items, grid)
        mine = rounds + jnp.where(snake_slot(rounds) < lax.rem(num_items, grid), 1, 0)

        def item(k):
            """The scalars of this CTA's k-th work item."""
            w = k * grid + snake_slot(k)
            head, prog = lax.rem(w, jnp.int32(num_q_heads)), lax.div(w, jnp.int32(num_q_heads))
            active = prog < total
            p = jnp.minimum(prog, num_programs - 1)
            seq = jnp.where(active, seq_ref[p], 0)
            q_first = first_ref[p]
            q_start = cu_ref[seq]
            q_len = jnp.where(active, cu_ref[seq + 1] - q_start, 0)
            kv_len = kv_len_ref[seq]
            cta_last = kv_len - q_len + jnp.minimum(q_first + 2 * bq, q_len) - 1
            return dict(head=head, prog=prog, active=active, seq=seq, q_first=q_first, q_start=q_start,
                        q_len=q_len, kv_len=kv_len, kv_head=lax.div(head, jnp.int32(group)),
                        cta_steps=jnp.where(active, pl.cdiv(cta_last + 1, bk), 0))

        def take_turn():
            plgpu.barrier_arrive(turn)
            plgpu.barrier_wait(turn)

        def compute_item(*, head, prog, active, q_first, q_start, q_len, kv_len, cta_steps, **_):
            rows_first = q_first + wg * bq
            n_rows = jnp.where(active, jnp.clip(q_len - rows_first, 0, bq), 0)
            first_pos = kv_len - q_len + rows_first
            steps = jnp.where(n_rows > 0, pl.cdiv(first_pos + n_rows, bk), 0)
            full = jnp.minimum(jnp.where(n_rows > 0, lax.div(first_pos + 1, bk), 0), steps)

            @pl.when(n_rows > 0)
            def _():
                # A TMA copy into tiled shared memory tiles the source rows too, so it can only start
                # at a multiple of 8 rows; sequences start anywhere. The rows go to the (untiled)
                # staging buffer first, then through registers into the tiled buffer wgmma reads.
                plgpu.copy_gmem_to_smem(q_ref.at[pl.ds(q_start + rows_first, bq), head], o_smem.at[wg],
                                        q_full.at[wg])
                plgpu.barrier_wait(q_full.at[wg])
                if interpret:
                    q_smem.at[wg][...] = o_smem.at[wg][...]
                else:
                    q_smem.at[wg][...] = plgpu.load(o_smem.at[wg], (), layout=plgpu.Layout.WGMMA,
                                                    optimized=False)
                plgpu.commit_smem()
                plgpu.barrier_wait(k_full.at[0])

            carry = (cast(jnp.zeros((bq, head_dim), jnp.float32), plgpu.Layout.WGMMA),
                     cast(jnp.full((bq,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1)),
                     cast(jnp.zeros((bq,), jnp.float32), plgpu.Layout.WGMMA.reduce(1)))

            def step(t, carry, *, masked: bool):
                acc, m_old, l_old = carry
                slot = lax.rem(t, jnp.int32(stages))

                def scores(acc_ref):
                    plgpu.wgmma(acc_ref, q_smem.at[wg], plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                    take_turn()
                    return acc_ref[...]

                if interpret:       # the interpreter's wgmma takes no transposed operand
                    s = lax.dot_general(q_smem.at[wg][...], k_smem.at[slot][...], (((1,), (1,)), ((), ())),
                                        preferred_element_type=jnp.float32)
                    take_turn()
                else:
                    s = pl.run_scoped(scores, plgpu.ACC((bq, bk), jnp.float32))
                plgpu.barrier_arrive(k_free.at[slot])
                if soft_cap is not None:
                    s = jnp.tanh(s * (options.sm_scale / soft_cap)) * (soft_cap * LOG2E)
                else:
                    s = s * scale
                if masked:
                    row = iota(0) + first_pos
                    key = iota(1) + t * bk
                    s = jnp.where((key <= row) & (key < kv_len), s, -jnp.inf)
                m_new = jnp.maximum(m_old, s.max(axis=1))
                alpha = jnp.exp2(m_old - m_new)
                probs = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
                acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
                l_new = l_old * alpha + probs.sum(axis=1)
                p16 = probs.astype(dtype)
                acc, l_new, m_new, p16 = lax.optimization_barrier((acc, l_new, m_new, p16))
                plgpu.barrier_arrive(turn)
                plgpu.barrier_wait(v_full.at[slot])
                plgpu.barrier_wait(turn)

                def values(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
                    nxt = t + 1

                    @pl.when(nxt < steps)
                    def _():
                        plgpu.barrier_wait(k_full.at[lax.rem(nxt, jnp.int32(stages))])

                if interpret:       # the interpreter has no run_state
                    acc = acc + jnp.dot(p16, v_smem.at[slot][...], preferred_element_type=jnp.float32)
                    nxt = t + 1

                    @pl.when(nxt < steps)
                    def _():
                        plgpu.barrier_wait(k_full.at[lax.rem(nxt, jnp.int32(stages))])
                else:               # accumulate into acc in place
                    acc = pl.run_state(values)(plgpu.ACC.init(acc))
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l_new

            def release(t, _):          # a tile this warpgroup's rows never see: free its slot
                slot = lax.rem(t, jnp.int32(stages))
                plgpu.barrier_wait(k_full.at[slot])
                plgpu.barrier_wait(v_full.at[slot])
                plgpu.barrier_arrive(k_free.at[slot])
                plgpu.barrier_arrive(v_free.at[slot])
                take_turn()
                take_turn()

            pl.when(wg == 1)(take_turn)
            carry = lax.fori_loop(0, full, lambda t, c: step(t, c, masked=False), carry)
            carry = lax.fori_loop(full, steps, lambda t, c: step(t, c, masked=True), carry)
            lax.fori_loop(steps, cta_steps, release, None)
            pl.when(wg == 0)(take_turn)

            acc, _, l_sum = carry
            out_rows = q_start + rows_first
            idle_rows = pad_start + (prog - total) * (2 * bq) + wg * bq
            # l_sum >= 1 on every row that saw a key (its maximum contributes 2**0); rows that saw
            # none (idle programs, padding) have acc = 0 and come out as zeros.
            out = acc / lax.broadcast_in_dim(jnp.maximum(l_sum, 1.0), acc.shape, [0])
            o_smem.at[wg][...] = out.astype(dtype)
            plgpu.commit_smem()

            @pl.when((n_rows == bq) | (~active & (idle_rows < num_tokens)))
            def _():
                first = jnp.where(active, out_rows, idle_rows)
                plgpu.copy_smem_to_gmem(o_smem.at[wg], o_ref.at[pl.ds(first, bq), head])

            @pl.when((n_rows > 0) & (n_rows < bq))
            def _():
                @pl.loop(0, n_rows)
                def _(r):
                    plgpu.copy_smem_to_gmem(o_smem.at[wg, pl.ds(r, 1)],
                                            o_ref.at[pl.ds(out_rows + r, 1), head])

            plgpu.wait_smem_to_gmem(0)

        def produce_item(*, seq, kv_head, cta_steps, **_):

            def fetch(t, slot, which):
                for j in range(copies):
                    token = t * bk + j * per_copy
                    page = pt_ref[seq, jnp.minimum(lax.div(token, page_size), max_pages - 1)]
                    rows = pl.ds(lax.rem(token, page_size) if page_size > bk else 0, per_copy)
                    src = layout.tma_tile(kv_refs, which, layer, page, rows, kv_head)
                    dst = (k_smem if which == 0 else v_smem).at[slot, pl.ds(j * per_copy, per_copy)]
                    plgpu.copy_gmem_to_smem(src, dst, (k_full if which == 0 else v_full).at[slot])

            def first_fetch(i):
                fetch(i, i, 0)
                fetch(i, i, 1)

            for i in range(stages):
                pl.when(i < cta_steps)(functools.partial(first_fetch, i))

            @pl.loop(0, jnp.maximum(cta_steps - stages, 0))
            def _(i):
                t = i + stages
                slot = lax.rem(i, jnp.int32(stages))
                plgpu.barrier_wait(k_free.at[slot])
                fetch(t, slot, 0)
                plgpu.barrier_wait(v_free.at[slot])
                fetch(t, slot, 1)

            @pl.loop(jnp.maximum(cta_steps - stages, 0), cta_steps)
            def _(i):                   # the last tiles' slots: wait until they are consumed too
                slot = lax.rem(i, jnp.int32(stages))
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])

        @pl.when(wg < COMPUTE_WGS)
        def _compute():
            plgpu.set_max_registers(232, action="increase")

            @pl.loop(0, mine)
            def _(k):
                compute_item(**item(k))

        @pl.when(wg == COMPUTE_WGS)
        def _producer():
            plgpu.set_max_registers(40, action="decrease")

            @pl.loop(0, mine)
            def _(k):
                produce_item(**item(k))

    tiled = (plgpu.TilingTransform((8, 128 // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(128))
    scratch = [
        plgpu.SMEM((COMPUTE_WGS, bq, head_dim), dtype, transforms=tiled),
        plgpu.SMEM((stages, bk, head_dim), dtype, transforms=tiled),
        plgpu.SMEM((stages, bk, head_dim), dtype, transforms=tiled),
        plgpu.SMEM((COMPUTE_WGS, bq, head_dim), dtype),
        plgpu.Barrier(num_arrivals=copies, num_barriers=stages),
        plgpu.Barrier(num_arrivals=copies, num_barriers=stages),
        plgpu.Barrier(num_barriers=COMPUTE_WGS),
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),
        plgpu.Barrier(num_arrivals=COMPUTE_WGS),
    ]
    kernel = plgpu.kernel(
        body, out_type=jax.ShapeDtypeStruct((num_tokens + pad, num_q_heads, head_dim), dtype),
        scratch_types=scratch,
        grid=(grid,), grid_names=("cta",), num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True, lowering_semantics=LANE),
        interpret=_interpret_params() if interpret else None)
    q_in = jnp.pad(q, ((0, pad), (0, 0), (0, 0))) if pad else q
    out = kernel(q_in, cu_q_lens, kv_lens, page_table, seq_plan, first_plan, meta, *kv_arrays)
    return out[:num_tokens] if pad else out


def _interpret_params():
    """Mosaic GPU's interpret mode (simulated shared memory, warpgroups, barriers and TMA on a CPU).

    JAX 0.10.2 and 0.11 (through the sources of August 2026) export no public name for these
    parameters (``plgpu.kernel(interpret=True)`` would take Pallas' generic interpreter, which has no
    barriers or TMA), so this is kvlab's one private JAX import, loaded only in interpret mode;
    later JAX releases document ``jax.experimental.pallas.mosaic_gpu.InterpretGPUParams``."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    return InterpretGPUParams()
