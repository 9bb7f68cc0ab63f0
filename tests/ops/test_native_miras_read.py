"""ops.native.miras_read: Miras' per-step reads in C (Memora's row softmax, Moneta's q-scale,
Yaad's identity with the Huber bias)
inside miras_chunked, against the same op on the PyTorch path (backend.force("torch")) and
against the token-by-token reference: outputs, final state and every gradient (inputs, gates,
U_init, the starting state), float64 to 1e-10 and float32 to 1e-4, both memory depths, a
starting state mid-chunk with its own gradient point; q = 3 takes the general power."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import counter

from rnnzoo.ops import backend, memory
from rnnzoo.ops.memory import attentional_bias, miras_chunked, miras_sequential, retention
from rnnzoo.ops.native import miras_read as native_read

CASES = [("kl", "l2", 4.0), ("lq", "lp", 4.0), ("lq", "lp", 3.0), ("l2", "huber", 4.0)]
IDS = ["kl", "lq4", "lq3", "yaad"]


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, native_read, "miras_read")


def _tensors(kind, dtype):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    B, T, H, K = 2, 11, 2, 3
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v = r(B, T, H, K)
    eta, alpha = torch.sigmoid(r(B, T, H)), torch.sigmoid(r(B, T, H) + 2)
    delta = 0.5 * F.softplus(r(B, T, H))         # huber's threshold: some errors above it
    widths = [K, K] if kind == "linear" else [K, 4 * K, K]
    init = [r(H, i, o) / i ** 0.5 for i, o in zip(widths[:-1], widths[1:])]
    mem = memory.miras_init_state(kind, B, H, K, dtype=dtype)
    state = [0.3 * r(*t.shape) for t in mem[:-1]]
    n = torch.tensor([1.0, 4.0], dtype=dtype)       # mid-chunk, and a full chunk to roll
    return [q, k, v, eta, alpha, delta], init, state, n


def _run(op, kind, ret, bias, qn, dtype):
    tensors, init, state, n = _tensors(kind, dtype)
    wrt = [t.requires_grad_() for t in [*tensors[:5], *init, *state]]
    z, s = op(kind, *tensors, 4, init, (*state, n), attentional_bias(bias, 3.0),
              retention(ret, qn))
    g = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=dtype)).sum() for t in (z, *s[:-1]))
    return [z, *s[:-1], *torch.autograd.grad(loss, wrt)]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("ret,bias,qn", CASES, ids=IDS)
def test_native_reads_equal_torch_and_reference(kind, ret, bias, qn, calls):
    native = _run(miras_chunked, kind, ret, bias, qn, torch.float64)
    assert calls[0] == (1 if kind == "linear" else 2)                     # one call a layer
    with backend.force("torch"):
        torch_path = _run(miras_chunked, kind, ret, bias, qn, torch.float64)
    ref = _run(miras_sequential, kind, ret, bias, qn, torch.float64)
    assert calls[0] == (1 if kind == "linear" else 2)                     # torch: no call
    for a, b, c in zip(native, torch_path, ref):
        assert (a - b).abs().max() < 1e-10
        assert (a - c).abs().max() < 1e-10
    assert max(t.abs().max() for t in native[-5:]) > 1e-3                 # gradients not all zero


@pytest.mark.parametrize("ret,bias,qn", [CASES[0], CASES[1], CASES[3]], ids=["kl", "lq4", "yaad"])
def test_native_reads_float32(ret, bias, qn, calls):
    native = _run(miras_chunked, "mlp", ret, bias, qn, torch.float32)
    assert calls[0] == 2
    ref = _run(miras_sequential, "mlp", ret, bias, qn, torch.float32)
    for a, c in zip(native, ref):
        assert (a - c).abs().max() < 1e-4 * (1 + c.abs().max())


@pytest.mark.parametrize("kind", ["softmax", "qscale", "identity"])
def test_books_its_flops(kind):
    """While counting (bench.layer_flops) the kernel books, forward and backward, per
    (batch, head, step) and layer: the rank-one update and the read (2 + 2 multiply-adds an
    entry), then the update again, dx, dV's outer product, da, dX and dG (6): by hand
    16 I O FLOPs a step, only the identity's dU_init product added by the counter."""
    from rnnzoo.ops import flop_count
    B, H, N, C, n_in, n_out = 2, 3, 2, 4, 5, 7
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    x, u0, a, e = r(B, H, N, C, n_in), r(H, n_in, n_out), r(B, H, N, C), r(B, H, N, C)
    U0, X, G = r(N, B, H, n_in, n_out), r(N, B, H, C, n_in), r(N, B, H, C, n_out)
    lib = native_read.load()
    with flop_count.counting() as tally:
        y = native_read.miras_read(lib, kind, 4.0, x, u0, U0, a.sigmoid(), e, X, G)
        assert tally[0] == 2 * 2 * B * H * N * C * n_in * n_out              # 4 I O a step
        y.sum().backward()
    assert tally[0] == 16 * B * H * N * C * n_in * n_out
    assert native_read.flops(B * H * N * C, n_in, n_out) == (tally[0] // 4, 3 * tally[0] // 4)


def _softmax_read_ref(x, u0, U0, a, e, X, G):
    """miras_read's softmax kind step by step in PyTorch: W_t = a_t W_t-1 - e_t X_t^T G_t from
    each chunk's U_0, y_t = x_t softmax_rows(U_init + W_t). Chunk-major U0, X, G."""
    B, H, N, C, _ = x.shape
    ys = []
    for n in range(N):
        W, yc = U0[n], []
        for t in range(C):
            W = (a[:, :, n, t, None, None] * W
                 - e[:, :, n, t, None, None] * X[n][:, :, t, :, None] * G[n][:, :, t, None, :])
            P = torch.softmax(u0 + W, -1)
            yc.append((x[:, :, n, t, None, :] @ P)[..., 0, :])
        ys.append(torch.stack(yc, 2))
    return torch.stack(ys, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_out", [7, 32])
def test_softmax_rows_drifting_within_a_chunk(dtype, n_out):
    """The softmax forward shifts each row's exponentials by its max at the chunk's start; a
    chunk whose rows drift ~300 a step from it (sums out of range) takes each step's own max
    instead (a test that fails in both dtypes without it). Forward and every input gradient against the PyTorch steps, both chunks."""
    B, H, N, C, n_in = 2, 1, 2, 5, 3
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    G = r(N, B, H, C, n_out)
    G[1] = 300 * G[1].sign()                     # chunk 1 drifts: past exp_d's range too
    ins = [r(B, H, N, C, n_in), r(H, n_in, n_out), r(N, B, H, n_in, n_out),
           torch.sigmoid(r(B, H, N, C) + 2), torch.rand(B, H, N, C, generator=g, dtype=dtype),
           r(N, B, H, C, n_in), G]
    ins = [t.requires_grad_() for t in ins]
    dy = r(B, H, N, C, n_out)
    y = native_read.miras_read(native_read.load(), "softmax", None, *ins)
    got = [y, *torch.autograd.grad((y * dy).sum(), ins)]
    y = _softmax_read_ref(*ins)
    want = [y, *torch.autograd.grad((y * dy).sum(), ins)]
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= tol * (1 + b.abs().max())
