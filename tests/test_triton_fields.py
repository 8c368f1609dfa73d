"""The PTX unpack of packed integer codes (``PtxFields``) against the jnp specification
(``JnpFields``): on the CPU by executing its instructions (``mov``, ``prmt``, ``shr``, ``lop3``)
with a small emulator of their PTX semantics, and compiled on the GPU (marked)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from kvlab.attention.pallas.triton_fields import PtxFields, _field_asm
from kvlab.kvcache.formats.integer import JNP_FIELDS


def _prmt(a: int, b: int, selector: int) -> int:
    """PTX ``prmt.b32`` (default mode): byte i of the result is byte ``selector`` nibble i of
    {b, a} (bytes 0-3 from a, 4-7 from b)."""
    pool = [(a >> 8 * i) & 0xFF for i in range(4)] + [(b >> 8 * i) & 0xFF for i in range(4)]
    return sum(pool[(selector >> 4 * i) & 7] << 8 * i for i in range(4))


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    """PTX ``lop3.b32``: bit j of the result is bit (a_j b_j c_j as a 3-bit index) of ``lut``,
    the index read with a as 0xF0, b as 0xCC and c as 0xAA."""
    out = 0
    for j in range(32):
        index = ((a >> j) & 1) << 2 | ((b >> j) & 1) << 1 | ((c >> j) & 1)
        out |= ((lut >> index) & 1) << j
    return out


def _run_ptx(asm: str, operands: dict[str, int]) -> dict[str, int]:
    """Execute the unpack's PTX text on 32-bit registers (``$n`` operands and named temporaries)."""
    regs = dict(operands)
    value = lambda x: regs[x] if x in regs else int(x, 0)  # noqa: E731
    for op, args in re.findall(r"(mov|prmt|shr|lop3)\.b32 ([^;]+);", asm):
        dst, *src = [s.strip() for s in args.split(",")]
        vals = [value(s) for s in src]
        regs[dst] = {"mov": lambda v: v[0], "prmt": lambda v: _prmt(*v), "shr": lambda v: v[0] >> v[1],
                     "lop3": lambda v: _lop3(*v)}[op](vals) & 0xFFFFFFFF
    return regs


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_the_ptx_text_computes_the_jnp_fields(bits):
    """Every byte value in every position of the four-byte register: the emulated PTX gives the
    float16 bits that ``JnpFields`` gives."""
    fields = 8 // bits
    data = np.arange(256, dtype=np.uint8)
    words = [np.roll(data, shift).reshape(-1, 4) for shift in range(4)]
    want = [np.asarray(w).view(np.uint16) for w in JNP_FIELDS.biased_float16(jnp.asarray(data), bits)]
    for block in words:
        for quad in block:
            word = int(quad.view("<u4")[0])
            for i in range(fields):
                regs = _run_ptx(_field_asm(bits, i), {"$2": word})
                halves = [regs["$0"] & 0xFFFF, regs["$0"] >> 16, regs["$1"] & 0xFFFF, regs["$1"] >> 16]
                assert halves == [int(want[i][b]) for b in quad], (bits, i, quad)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_compiled_ptx_fields_equal_the_jnp_fields(bits):
    """``PtxFields`` inside a Triton-lowered kernel on a tile of random bytes, bit for bit."""
    data = jnp.asarray(np.random.default_rng(bits).integers(0, 256, (32, 64)), jnp.uint8)
    fields = 8 // bits

    def kernel(x_ref, *out_refs):
        for ref, part in zip(out_refs, PtxFields().biased_float16(x_ref[...], bits)):
            ref[...] = part

    got = pl.pallas_call(kernel, out_shape=[jax.ShapeDtypeStruct(data.shape, jnp.float16)] * fields)(data)
    for g, w in zip(got, JNP_FIELDS.biased_float16(data, bits)):
        np.testing.assert_array_equal(np.asarray(g).view(np.uint16), np.asarray(w).view(np.uint16))
