"""A real option (a cell's dt, a step size) as one of `NativeStep.ints`: its float64 bits
as a signed 64-bit int, which the C step reads back exactly (`real_of` in the kernels).

    real_bits(0.5) -> int;  C: union { long i; double d; } -> 0.5
"""

from __future__ import annotations

import struct

__all__ = ["real_bits"]


def real_bits(x: float) -> int:
    """float64 bits of x as a signed 64-bit int."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]
