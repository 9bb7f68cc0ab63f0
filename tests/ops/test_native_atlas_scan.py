"""ops.native.atlas_scan, ATLAS's chunk momenta and memories (with the memory model's reads)
as C recurrences (atlas_chunked's CPU path), against a plain PyTorch loop over the steps:
outputs and the gradients of every input, one and two weights (tall and wide blocks of the
packed state), windows 1, 4 and 8, a chunk of one step, one row and head, 1 and 2 threads,
float64 tight and float32 loose; and the layer's chunk mode taking them, equal to its
PyTorch path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, counter, outputs_and_grads, threads

import rnnzoo
from rnnzoo.ops import backend
from rnnzoo.ops.native import atlas_scan


def _momenta_loop(S0, e, w, pairs, W1):
    C = e.shape[-1]
    S, out = S0, []
    for t in range(C):
        g = torch.cat([(u[..., t:t + W1 + 1, :, None] * v[..., t:t + W1 + 1, None, :])
                       .sum(-3).flatten(-2) for u, v in pairs], -1)
        S = e[..., t, None] * S - w[..., t, None] * g
        out.append(S)
    return torch.stack(out, -2)


def _reads_loop(M0, U, a, c, q, W0):
    """z_t of the memory model at weights W0 + M_t, M_t = a_t M_{t-1} + c_t U_t, blocks of
    M stored short side first; and the last M_t."""
    M, out = M0, []
    for t in range(a.shape[-1]):
        M = a[..., t, None] * M + c[..., t, None] * U[..., t, :]
        x, off = q[..., t, :], 0
        for k, w0 in enumerate(W0):
            i, o = w0.shape[-2:]
            blk = M[..., off:off + i * o]
            off += i * o
            Mk = blk.unflatten(-1, (o, i)).transpose(-1, -2) if i > o else \
                blk.unflatten(-1, (i, o))
            if k:
                x = F.gelu(x, approximate="tanh")
            x = (x[..., None, :] @ (w0 + Mk))[..., 0, :]
        out.append(x)
    return torch.stack(out, -2), M


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("lead,C,W1,shapes", [((2, 3), 5, 3, [(4, 9), (3, 7)]),
                                              ((1,), 1, 0, [(2, 5)]),
                                              ((2, 1), 16, 7, [(16, 64), (16, 64)])])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_momenta_match_the_loop(dtype, tol, lead, C, W1, shapes, n_threads):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    N = sum(sh * lo for sh, lo in shapes)
    S0 = r(*lead, N)
    e, w = (torch.rand(*lead, C, generator=gen, dtype=dtype) for _ in range(2))
    pairs = [(r(*lead, C + W1, sh), r(*lead, C + W1, lo)) for sh, lo in shapes]
    ins = [t.requires_grad_() for t in (S0, e, w, *[x for p in pairs for x in p])]
    pairs = [tuple(ins[3 + 2 * k:5 + 2 * k]) for k in range(len(shapes))]
    lib = atlas_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(atlas_scan.momenta(lib, ins[0], ins[1], ins[2], pairs, W1),
                                ins)
    St = _momenta_loop(ins[0], ins[1], ins[2], pairs, W1)
    want = outputs_and_grads([St, St[..., -1, :]], ins)
    names = ["St", "S_last", "dS0", "de", "dw", *[f"d{x}{k}" for k in range(len(shapes)) for x in "uv"]]
    assert_close(got, want, names, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,H,C,shapes", [(2, 3, 5, [(4, 9), (9, 3)]), (1, 1, 1, [(5, 2)]),
                                          (2, 2, 16, [(16, 64), (64, 16)]),
                                          (1, 2, 3, [(7, 3), (3, 4)])])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_reads_match_the_loop(dtype, tol, B, H, C, shapes, n_threads):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    N = sum(i * o for i, o in shapes)
    ins = [r(B, H, N), r(B, H, C, N), torch.rand(B, H, C, generator=gen, dtype=dtype),
           r(B, H, C), r(B, H, C, shapes[0][0]), *[r(H, i, o) for i, o in shapes]]
    ins = [t.requires_grad_() for t in ins]
    lib = atlas_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(atlas_scan.reads(lib, *ins[:5], ins[5:]), ins)
    want = outputs_and_grads(_reads_loop(*ins[:5], ins[5:]), ins)
    names = ["z", "M_last", "dM0", "dU", "da", "dc", "dq", *[f"dW{k}" for k in range(len(shapes))]]
    assert_close(got, want, names, tol)


@pytest.mark.parametrize("options", [dict(muon=True), dict(muon=False, memory_depth=1),
                                     dict(muon=True, feature_map="square", window=3)])
def test_atlas_chunk_takes_the_recurrences_and_equals_the_torch_path(monkeypatch, options):
    """The layer's chunk mode calls both kernels on the CPU and gives the outputs, state and
    input gradients of its PyTorch products (backend.force("torch")), T off the chunk grid."""
    torch.manual_seed(0)
    layer = rnnzoo.create("atlas", d_model=8, num_heads=2, chunk_size=4, **options).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    calls = counter(monkeypatch, atlas_scan, "momenta", "reads")

    def run():
        y, state = layer(x, mode="chunk")
        return outputs_and_grads([y, *[s for s in state if s.is_floating_point()]], [x])
    got = run()
    assert calls[0] > 0
    n = calls[0]
    with backend.force("torch"):
        want = run()
    assert calls[0] == n
    assert_close(got, want, [f"out{i}" for i in range(len(got))], 1e-10)
