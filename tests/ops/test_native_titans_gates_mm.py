"""ops.native.titans_scan's gate kernels, whose q k^T and dq = dqk k, dk = dqk^T q run on
mm.h's register tiles, against the PyTorch coefficients at the widths the tiles take apart:
C = 16 (the layer's chunk: one AVX-512 vector of columns), C wider than a tile and not a
multiple of the vector, K = 32 (the kernels' own build) and K = 33; outputs and the gradients
of all six inputs, 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, outputs_and_grads, threads
from test_native_titans_scan import _gates_torch

from rnnzoo.ops.native import titans_scan


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,H,N,C,K", [(2, 2, 3, 16, 32), (1, 3, 2, 9, 32), (1, 1, 2, 37, 33)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_gates_on_tiles_match_the_pytorch_coefficients(dtype, tol, B, H, N, C, K, n_threads):
    gen = torch.Generator().manual_seed(0)
    ins = [torch.randn(B, H, N, C, K, generator=gen, dtype=dtype) for _ in range(2)]
    ins += [0.2 + torch.rand(B, H, N, C, generator=gen, dtype=dtype) for _ in range(4)]
    ins = [t.requires_grad_() for t in ins]
    lib = titans_scan.load()
    with threads(n_threads):
        got = outputs_and_grads(titans_scan.titans_gates(lib, *ins), ins)
    want = outputs_and_grads(_gates_torch(*ins), ins)
    assert not got[0].triu(1).any()
    assert_close(got, want, [f"out{i}" for i in range(len(want))], tol)
