"""The one dtype rule for recurrences, used by ops and layers alike.

Recurrences accumulate in float32 whatever the input's dtype (bfloat16 and
float16 included), and in float64 when the input is float64; complex states
follow the same rule (complex64 / complex128).
"""

from __future__ import annotations

import torch

_WIDE = (torch.float64, torch.complex128)


def compute_dtype(x: torch.Tensor | torch.dtype | None) -> torch.dtype:
    """The real dtype a recurrence runs in for input `x` (a tensor or a dtype):
    float64 for float64 / complex128, float32 otherwise."""
    dtype = x.dtype if isinstance(x, torch.Tensor) else x
    return torch.float64 if dtype in _WIDE else torch.float32


def state_dtype(dtype: torch.dtype | None, complex_: bool = False) -> torch.dtype:
    """The dtype a state is kept in for inputs of `dtype` (complex with `complex_`)."""
    wide = dtype in _WIDE
    if complex_:
        return torch.complex128 if wide else torch.complex64
    return torch.float64 if wide else torch.float32
