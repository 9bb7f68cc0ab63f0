"""ops.native.ttt_read: the TTT dual-form read of a block, z = x W + c - A G with
A_ij = tok_i (x_i . X_j + 1) on j <= i, in C against the torch form it replaces (ops.memory's
_read_all under backend.force("torch")): z and the gradients in all six inputs, float64 to
1e-11 and float32 to 1e-5, on two threads; shapes with a mini-batch not a vector wide, I != O
either way, one block; and TTT-MLP's minibatch form calls it once per dense layer."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads

from rnnzoo import create
from rnnzoo.ops import backend
from rnnzoo.ops.native import ttt_read


def _torch_read(x, X, W, c, G, tok):
    att = tok[:, None] * torch.tril(x @ X.transpose(1, 2) + 1)
    return x @ W + c[:, None] - att @ G


def _inputs(N, M, Di, Do, dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(N, M, Di), (N, M, Di), (N, Di, Do), (N, Do), (N, M, Do)]
    ts = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    tok = torch.rand(M, generator=g, dtype=dtype) + 0.1
    return [t.requires_grad_() for t in (*ts, tok)]


@pytest.mark.parametrize("N,M,Di,Do", [(7, 16, 32, 32), (3, 5, 9, 20), (2, 16, 128, 32),
                                     (1, 1, 3, 1), (4, 17, 33, 7)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_native_read_equals_torch(N, M, Di, Do, dtype, tol):
    lib = ttt_read.load()
    assert lib is not None
    ins = _inputs(N, M, Di, Do, dtype)
    with threads(2):
        got = outputs_and_grads([ttt_read.read(lib, *ins)], ins)
    want = outputs_and_grads([_torch_read(*ins)], ins)
    assert_close(got, want, ["z", "dx", "dX", "dW", "dc", "dG", "dtok"], tol)
    assert all(t.abs().max() > 1e-3 for t in got)


def test_ttt_mlp_reads_in_c(monkeypatch):
    calls = counter(monkeypatch, ttt_read, "read")
    torch.manual_seed(0)
    layer = create("ttt_mlp", d_model=16, num_heads=2, mini_batch_size=4).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y = layer(x, mode="minibatch")[0]
    assert calls[0] == 2
    with backend.force("torch"):
        ref = layer(x, mode="minibatch")[0]
    assert calls[0] == 2
    assert (y - ref).abs().max() < 1e-12


@pytest.mark.parametrize("B,NT,M,H,K", [(2, 3, 16, 4, 32), (1, 2, 5, 1, 9)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_native_read_of_token_major_views(B, NT, M, H, K, dtype, tol):
    """x, X as (B, H, NT, M, K) blocks of a layer's (B, T, H, K) tensors (x a slice of a wider
    one, as TTT's q is of its conv's output) and z written in that layout: equal to the torch
    form on the flat copies, z and the gradients; z, dx, dX land in the token-major layout."""
    lib = ttt_read.load()
    g = torch.Generator().manual_seed(1)
    T = NT * M
    blocks = lambda t: t.view(B, NT, M, H, K).permute(0, 3, 1, 2, 4)  # noqa: E731
    wide = torch.randn(B, T, 2, H, K, generator=g, dtype=dtype).requires_grad_()
    Xt = torch.randn(B, T, H, K, generator=g, dtype=dtype).requires_grad_()
    W, G = (torch.randn(B, H, NT, *s, generator=g, dtype=dtype).requires_grad_()
            for s in ((K, K), (M, K)))
    c = torch.randn(B, H, NT, K, generator=g, dtype=dtype).requires_grad_()
    tok = (torch.rand(M, generator=g, dtype=dtype) + 0.1).requires_grad_()
    ins = [wide, Xt, W, c, G, tok]

    def native():
        x = wide[:, :, 0].unflatten(1, (NT, M)).permute(0, 3, 1, 2, 4)   # strided, no copy
        z = ttt_read.read(lib, x, blocks(Xt), W, c, G, tok, like=ttt_read.tokens_major(x))
        assert z.permute(0, 2, 3, 1, 4).is_contiguous()
        return z

    def reference():
        flat = lambda t: t.reshape(B * H * NT, *t.shape[3:])  # noqa: E731
        x = wide[:, :, 0].unflatten(1, (NT, M)).permute(0, 3, 1, 2, 4)
        return _torch_read(flat(x), flat(blocks(Xt)), flat(W), flat(c), flat(G),
                           tok).view(B, H, NT, M, K)

    with threads(2):
        got = outputs_and_grads([native()], ins)
    want = outputs_and_grads([reference()], ins)
    assert_close(got, want, ["z", "dwide", "dX", "dW", "dc", "dG", "dtok"], tol)
    assert all(t.abs().max() > 1e-3 for t in got[:2])
