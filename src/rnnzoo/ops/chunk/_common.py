"""What the chunkwise ops share with their Triton kernels (`rnnzoo.ops.triton`): the argument
checks, so both give the same errors, the chunk layout and the unit-lower-triangular
inverse. A module of its own so that the ops (which
dispatch to the kernels) and the kernels (which check as the ops do) import it, not each
other.
"""

from __future__ import annotations

import torch

__all__ = ["check_delta", "check_linear", "check_mlstm", "check_rwkv7", "to_chunks",
           "unit_lower_inverse"]


def check_delta(op: str, q: torch.Tensor, named: dict[str, tuple[torch.Tensor | None, tuple]],
                initial_state, V: int):
    """Every tensor's shape against the pattern built from q's (B, T, H, K)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or not q.is_floating_point():
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"{op}: q must be a floating-point (B, T, H, K) tensor, got {got}")
    for name, (t, shape) in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} must have shape {shape}, got {got}")
    B, _, H, K = q.shape
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, V):
        raise ValueError(f"{op}: initial_state must have shape {(B, H, K, V)}, "
                         f"got {tuple(initial_state.shape)}")


def check_rwkv7(r, w, k, v, a, b, initial_state):
    B, T, H, K = r.shape if isinstance(r, torch.Tensor) and r.dim() == 4 else (0, 0, 0, 0)
    V = v.shape[-1] if isinstance(v, torch.Tensor) else 0
    check_delta("rwkv7", r, dict(w=(w, (B, T, H, K)), k=(k, (B, T, H, K)), v=(v, (B, T, H, V)),
                            a=(a, (B, T, H, K)), b=(b, (B, T, H, K))), initial_state, V)


def check_linear(q, k, v, g, initial_state, bonus):
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, T, H, K) and v (B, T, H, V) with equal B, T, H; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, T, H, K = q.shape
    if g is not None and g.shape not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"log_decay must be (B, T, H) or (B, T, H, K) = {(B, T, H)} or "
                         f"{(B, T, H, K)}, got {tuple(g.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, v.shape[-1])}, "
                         f"got {tuple(initial_state.shape)}")
    if bonus is not None and bonus.shape != (H, K):
        raise ValueError(f"bonus must be (H, K) = {(H, K)}, got {tuple(bonus.shape)}")


def check_mlstm(q, k, v, log_i, log_f, initial_state):
    check_linear(q, k, v, None, None, None)
    B, T, H, K = q.shape
    for name, t in (("log_i", log_i), ("log_f", log_f)):
        if t.shape != (B, T, H):
            raise ValueError(f"{name} must be (B, T, H) = {(B, T, H)}, got {tuple(t.shape)}")
    if initial_state is not None:
        want = ((B, H, K, v.shape[-1]), (B, H, K), (B, H))
        got = tuple(tuple(s.shape) for s in initial_state)
        if got != want:
            raise ValueError(f"initial_state must be (C, n, m) of shapes {want}, got {got}")


def unit_lower_inverse(A):
    """(I + A)^{-1} for strictly lower-triangular A (..., C, C), by one batched triangular
    solve against the identity (the UT transform's T, before its diag(beta) factor).
    Solving for I and then multiplying is faster on CPU than solving for wide right-hand sides."""
    C = A.shape[-1]
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    return torch.linalg.solve_triangular(eye + A, eye.expand(A.shape), upper=False,
                                         unitriangular=True)


def to_chunks(x, C):
    """(B, T, H, ...) -> (B, H, N, C, ...), zero-padded at the end to N * C steps."""
    T = x.shape[1]
    N = -(-T // C)
    pad = N * C - T
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], 1)
    x = x.reshape(x.shape[0], N, C, *x.shape[2:])
    return x.movedim(3, 1).contiguous()  # (B, H, N, C, ...)
