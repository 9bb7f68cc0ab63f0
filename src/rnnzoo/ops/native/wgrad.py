"""The weight gradient g^T r of a product r W^T in C (wgrad.c): g (N, G), r (N, K), both
dense row-major, -> (G, K), out's rows split over the threads (ops.native.rows). Used by
ops.native.linear's `weight_grad` on the CPU in float32 outside autograd where torch runs
AVX-512 (on AVX2 torch's matmul is faster: linear._weight_grads).

    weight_grad(g, r, bias=False) -> (G, K), or None when the library cannot be built;
                                     with bias, (g^T r, g's column sums (G,))
"""

from __future__ import annotations

import ctypes

import torch

from rnnzoo.ops import native


def weight_grad(g: torch.Tensor, r: torch.Tensor, bias: bool = False):
    """g (N, G), r (N, K), contiguous, one float dtype -> g^T r (G, K) (with bias: and g.sum(0),
    (G,), in the same pass); None without the library."""
    lib = native.load("wgrad")
    if lib is None:
        return None
    (N, G), K = g.shape, r.shape[1]
    out = g.new_empty(G, K)
    db = g.new_empty(G) if bias else None
    fn = native.kernel(lib, "wgrad", g.dtype, [ctypes.c_void_p] * 4 + [ctypes.c_long] * 5)
    # whole tiles of 8 rows a thread where there are enough rows
    p = max(1, min(torch.get_num_threads(), G // 8))
    cuts = [G * i // p // 8 * 8 for i in range(p)] + [G]
    P = native.ptr
    native.run(fn, [(P(out), P(db), P(g), P(r), N, G, K, a, b)
                    for a, b in zip(cuts, cuts[1:]) if b > a])
    return (out, db) if bias else out
