"""ops.native.atlas_scan, ATLAS's chunk momenta and memories as C recurrences (atlas_chunked's
CPU path), against a plain PyTorch loop over the steps: outputs and the gradients of every
input, one and two weights (tall and wide blocks of the packed state), window 1 and 4,
a chunk of one step, one row, 1 and 2 threads, float64 tight and float32 loose."""

from __future__ import annotations

import pytest
import torch
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


def _memories_loop(M0, U, a, c):
    M, out = M0, []
    for t in range(a.shape[-1]):
        M = a[..., t, None] * M + c[..., t, None] * U[..., t, :]
        out.append(M)
    return torch.stack(out, -2)


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
        got = outputs_and_grads([atlas_scan.momenta(lib, ins[0], ins[1], ins[2], pairs, W1)],
                                ins)
    want = outputs_and_grads([_momenta_loop(ins[0], ins[1], ins[2], pairs, W1)], ins)
    names = ["St", "dS0", "de", "dw", *[f"d{x}{k}" for k in range(len(shapes)) for x in "uv"]]
    assert_close(got, want, names, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("lead,C,N", [((2, 3), 5, 37), ((1,), 1, 4), ((2, 2), 16, 2048)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_memories_match_the_loop(dtype, tol, lead, C, N, n_threads):
    gen = torch.Generator().manual_seed(0)
    ins = [torch.randn(*lead, N, generator=gen, dtype=dtype),
           torch.randn(*lead, C, N, generator=gen, dtype=dtype),
           torch.rand(*lead, C, generator=gen, dtype=dtype),
           torch.randn(*lead, C, generator=gen, dtype=dtype)]
    ins = [t.requires_grad_() for t in ins]
    lib = atlas_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads([atlas_scan.memories(lib, *ins)], ins)
    want = outputs_and_grads([_memories_loop(*ins)], ins)
    assert_close(got, want, ["Ms", "dM0", "dU", "da", "dc"], tol)


@pytest.mark.parametrize("options", [dict(muon=True), dict(muon=False, memory_depth=1),
                                     dict(muon=True, feature_map="square", window=3)])
def test_atlas_chunk_takes_the_recurrences_and_equals_the_torch_path(monkeypatch, options):
    """The layer's chunk mode calls both kernels on the CPU and gives the outputs, state and
    input gradients of its PyTorch products (backend.force("torch")), T off the chunk grid."""
    torch.manual_seed(0)
    layer = rnnzoo.create("atlas", d_model=8, num_heads=2, chunk_size=4, **options).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    calls = counter(monkeypatch, atlas_scan, "momenta", "memories")

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
