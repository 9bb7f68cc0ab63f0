"""ops.native.miras_read (softmax, q-scale and identity) at the benchmark's widths: the kernel compiled for a constant row
width (O = 32 and 128, the two layers of a K = 32 MLP memory), a row at a time with the
per-step sums summed 16 steps at a time (C = 16, and C = 20: a second, partial group), and its
dU_init summed over two threads, against the recurrence written out step by step in PyTorch (float64):
y_t = x_t phi(U_init + W_t), W_t = a_t W_t-1 - e_t X_t^T G_t from U_0, every gradient."""

from __future__ import annotations

import pytest
import torch
from _native_check import outputs_and_grads, threads

from rnnzoo.ops.native import miras_read as native_read


def _reference(kind, q, x, u0, U0, a, e, X, G):
    """The same reads as a PyTorch loop over the C steps of every chunk."""
    W, ys = U0, []
    for t in range(x.shape[3]):
        W = a[..., t, None, None] * W - e[..., t, None, None] * (
            X[..., t, :, None] * G[..., t, None, :])
        V = u0[:, None] + W
        if kind == "identity":
            P = V
        elif kind == "softmax":
            P = torch.softmax(V, -1)
        else:
            P = V / torch.linalg.vector_norm(V, q, dim=(-2, -1), keepdim=True) ** (q - 2)
        ys.append((x[..., t, None, :] @ P)[..., 0, :])
    return torch.stack(ys, 3)


def _inputs(n_in, n_out, C=16):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    B, H, N = 1, 2, 3
    return [r(B, H, N, C, n_in), r(H, n_in, n_out) / n_in ** 0.5, 0.3 * r(B, H, N, n_in, n_out),
            torch.sigmoid(r(B, H, N, C) + 2), 0.5 * torch.sigmoid(r(B, H, N, C)),
            r(B, H, N, C, n_in), r(B, H, N, C, n_out)]


def _chunks(inputs):
    """The kernel's arguments: U_0, X, G as lists of their chunks."""
    x, u0, U0, a, e, X, G = inputs
    return x, u0, U0.unbind(2), a, e, X.unbind(2), G.unbind(2)


@pytest.mark.parametrize("kind,q", [("softmax", None), ("qscale", 4.0), ("identity", None)],
                         ids=["softmax", "qscale", "identity"])
@pytest.mark.parametrize("n_in,n_out,C", [(32, 128, 16), (128, 32, 16), (32, 128, 20)])
def test_native_read_at_benchmark_widths(kind, q, n_in, n_out, C):
    lib = native_read.load()
    if lib is None:
        pytest.skip("no C compiler")
    inputs = [t.requires_grad_() for t in _inputs(n_in, n_out, C)]
    ref = outputs_and_grads([_reference(kind, q, *inputs)], inputs)
    for n in (1, 2):
        with threads(n):
            got = outputs_and_grads([native_read.miras_read(lib, kind, q, *_chunks(inputs))], inputs)
        for a, b in zip(got, ref):
            assert (a - b).abs().max() < 1e-10 * (1 + b.abs().max())
    assert min(t.abs().max() for t in got[1:]) > 1e-6                    # every gradient reached
