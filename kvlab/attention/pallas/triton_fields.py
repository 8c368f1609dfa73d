"""Packed integer codes to float16 in a few PTX instructions (the Triton-lowered kernels' unpack).

The integer KV formats pack ``8 // bits`` codes a byte (field ``i`` in bits ``i * bits``), and the
kernels read them as float16 ``1024 + code`` (the exponent trick: a code under the mantissa of
1024.0, no conversion instruction). ``formats.integer.JnpFields`` states this with jnp operations,
one element at a time (a shift, a mask, a widening and an or each); ``PtxFields`` computes the
same values with ``elementwise_inline_asm`` on four bytes at once:

* ``prmt.b32`` spreads two bytes into the low bytes of a register's two 16-bit halves, and with
  0x64 as the high byte (int8) the halves already are ``1024 + byte``: one instruction per two
  codes;
* for narrower fields, ``lop3.b32`` keeps one field of each half and ors in 0x6400, after a
  ``shr.b32`` for the fields above the first: two or three instructions per two codes.

The result is exactly ``JnpFields``' (integer operations only); ``tests/test_triton_fields.py``
runs the PTX text through an emulator on the CPU and compares the compiled unpack on the GPU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as plgpu

_PAIRS = ("0x4140", "0x4342")        # prmt selectors: bytes (0, 1) and (2, 3) into the halves' low bytes


def _field_asm(bits: int, field: int) -> str:
    """PTX for one register of four bytes (operand ``$2``) into the float16 ``1024 + field`` of
    each (``$0``: bytes 0-1, ``$1``: bytes 2-3). The bytes are copied first: an output may share
    the input's register. (One field an instruction block: the Pallas lowering of JAX 0.11
    takes one result from an inline-assembly block.)"""
    lines = ["{", ".reg .b32 bytes, pair;", "mov.b32 bytes, $2;"]
    if bits == 8:
        lines += [f"prmt.b32 ${half}, bytes, 0x64646464, {sel};" for half, sel in enumerate(_PAIRS)]
        return " ".join(lines + ["}"])
    mask = f"0x{(1 << bits) - 1:04x}{(1 << bits) - 1:04x}"
    for half, sel in enumerate(_PAIRS):
        lines.append(f"prmt.b32 pair, bytes, 0, {sel};")
        if field:
            lines.append(f"shr.b32 pair, pair, {field * bits};")
        lines.append(f"lop3.b32 ${half}, pair, {mask}, 0x64006400, 0xea;")     # (a & b) | c
    return " ".join(lines + ["}"])


@dataclasses.dataclass(frozen=True)
class PtxFields:
    """``JnpFields``' contract in PTX (compiled kernels only; interpret mode uses ``JnpFields``)."""

    def biased_float16(self, data: jax.Array, bits: int) -> tuple[jax.Array, ...]:
        """data uint8 ``[n, w]`` -> ``8 // bits`` float16 arrays ``[n, w]``: ``1024 + field i``."""
        out = jax.ShapeDtypeStruct(data.shape, jnp.float16)
        return tuple(plgpu.elementwise_inline_asm(_field_asm(bits, i), args=[data], constraints="=r,=r,r",
                                                  pack=4, result_shape_dtypes=[out])[0]
                     for i in range(8 // bits))
