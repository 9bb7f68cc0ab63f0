"""Rotary position embedding (Su et al. 2021, "RoFormer", arXiv:2104.09864).

Channel pair j of a query or key at position n turns by the angle n theta_j:

    (x_a, x_b) -> (x_a cos(n theta_j) - x_b sin(n theta_j),  x_a sin(n theta_j) + x_b cos(n theta_j))

Two pairings are in use: "adjacent" pairs channels (2j, 2j + 1), as RetNet's xPos /
torchscale code does; "halves" pairs (j, j + K/2), as GPT-NeoX and LLaMA do. The
frequencies theta (K/2,) are the caller's: RetNet spaces them as 1 / 10000^linspace(0, 1),
the attention layer as base^(-j / (K/2)).
"""

from __future__ import annotations

import torch

from rnnzoo.checks import choice
from rnnzoo.ops import backend


def frequencies(half: int, base: float = 10000.0, dtype=torch.float64, device=None) -> torch.Tensor:
    """theta_j = base^(-j / half), j < half (GPT-NeoX / LLaMA spacing): (half,)."""
    return base ** (-torch.arange(half, dtype=dtype, device=device) / half)


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor,
           pairs: str = "adjacent") -> torch.Tensor:
    """x: (B, T, H, K) rotated by positions (B, T) times theta (K/2,); same shape and dtype.

    The angles are computed in positions' dtype (theta is cast to it), then cast to x's.
    """
    angle = positions[..., None] * theta.to(positions.dtype)  # (B, T, K/2)
    return turn(x, angle[:, :, None], pairs)  # one angle for every head


def turn(x: torch.Tensor, angle: torch.Tensor, pairs: str = "adjacent") -> torch.Tensor:
    """x (..., K) with channel pair j turned by angle[..., j]; angle (..., K/2) broadcasts
    against x's leading dims (data-dependent angles, as Mamba-3's). Same shape and dtype as x."""
    choice("pairs", pairs, ("adjacent", "halves"))
    if pairs == "adjacent" and backend.use_native(x):
        # CPU, eager, float32/64: the pairs as complex numbers x_a + i x_b, times e^{i angle}:
        # one product (its backward one product by the conjugate), where the real form below
        # makes cos and sin and copies every channel by repeat_interleave and stack, both ways
        e = torch.polar(torch.ones_like(angle), angle).to(
            torch.complex64 if x.dtype == torch.float32 else torch.complex128)
        pairs_c = torch.view_as_complex(x.contiguous().unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs_c * e).flatten(-2)
    if pairs == "adjacent":
        angle = angle.repeat_interleave(2, -1)
        half = x.unflatten(-1, (-1, 2))
        turned = torch.stack([-half[..., 1], half[..., 0]], -1).flatten(-2)
    else:
        angle = torch.cat([angle, angle], -1)
        x1, x2 = x.chunk(2, -1)
        turned = torch.cat([-x2, x1], -1)
    return x * angle.cos().to(x.dtype) + turned * angle.sin().to(x.dtype)
