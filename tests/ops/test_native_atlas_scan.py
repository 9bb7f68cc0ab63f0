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
    calls = counter(monkeypatch, atlas_scan, "mom_fwd", "read_fwd")

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


@pytest.mark.parametrize("kind,muon,window,B,H,T,n0,n_threads,group", [
    ("mlp", True, 3, 2, 2, 11, 2, 1, None), ("mlp", True, 8, 2, 1, 9, 0, 2, 1),
    ("mlp", False, 2, 1, 2, 7, 3, 1, None), ("linear", False, 1, 1, 1, 5, 1, 1, None),
    ("linear", False, 4, 2, 2, 10, 0, 2, 1)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-3)])
def test_chunk_runs_by_hand_equal_the_per_chunk_graph(monkeypatch, kind, muon, window, B, H,
                                                      T, n0, n_threads, group, dtype, tol):
    """ops.atlas._Chunks (a run of chunks, one autograd node, its backward by hand) against
    the same chunks as per-chunk autograd over the kernels (atlas_scan.momenta / reads):
    outputs, state and the gradient of every input (q, k, v, gates, initial weights, every
    state tensor), T off the chunk grid, a state mid-chunk, checkpointed segments (group)."""
    from rnnzoo.ops import atlas as ops_atlas
    gen = torch.Generator().manual_seed(0)
    K, C = 4, 4
    init = [torch.randn(H, i, o, generator=gen, dtype=dtype) / i ** 0.5
            for i, o in ([(K, K)] if kind == "linear" else [(K, 4 * K), (4 * K, K)])]
    state = list(ops_atlas.atlas_init_state(kind, B, H, K, window, dtype=dtype))
    L = len(init)
    state = [torch.randn(t.shape, generator=gen, dtype=dtype) * 0.3 for t in state]
    state[3 * L] = torch.full((B,), float(n0), dtype=dtype)
    qkv = [torch.randn(B, T, H, K, generator=gen, dtype=dtype) for _ in range(3)]
    qkv = [t / t.norm(dim=-1, keepdim=True) for t in qkv]
    gates = [torch.rand(B, T, H, generator=gen, dtype=dtype) for _ in range(4)]
    ins = [t.requires_grad_() for t in (*qkv, *gates, *init,
                                        *[s for i, s in enumerate(state) if i != 3 * L])]
    if group:
        monkeypatch.setattr(ops_atlas, "GROUP", group * B * H * C * max(w[0].numel() for w in init))
    calls = counter(monkeypatch, ops_atlas, "_segment_native")

    def run():
        st = list(ins[7 + L:])
        st.insert(3 * L, state[3 * L])
        z, new = ops_atlas.atlas_chunked(kind, *ins[:7], C, ins[7:7 + L], tuple(st),
                                         muon=muon)
        return outputs_and_grads([z, *[s for s in new if s.is_floating_point()]], ins)
    with threads(n_threads):
        got = run()
        assert calls[0] > (1 if group else 0)
        monkeypatch.setattr(ops_atlas, "_native_config", lambda *a: None)
        want = run()
    names = [f"out{i}" for i in range(len(got) - len(ins))] + [f"d{i}" for i in range(len(ins))]
    assert_close(got, want, names, tol)


def _window_grads(P, k, v, g):
    """The Omega rule's window gradients in PyTorch (ops.memory._grads, weight-only, target
    v): the pairs' factors (X2, gamma G1, gamma G) for the MLP, (gamma G,) for the linear
    memory."""
    if len(P) == 1:
        return (g[..., None] * (k @ P[0] - v),)
    Z1 = k @ P[0]
    X2 = F.gelu(Z1, approximate="tanh")
    G = X2 @ P[1] - v
    G1 = torch.ops.aten.gelu_backward(G @ P[1].transpose(-1, -2), Z1, approximate="tanh")
    return X2, g[..., None] * G1, g[..., None] * G


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,H,W,shapes", [(2, 3, 5, [(4, 9), (9, 3)]), (1, 1, 1, [(5, 2)]),
                                          (2, 2, 23, [(16, 64), (64, 16)]),
                                          (1, 2, 3, [(7, 3), (3, 4)]), (2, 1, 4, [(3, 3)])])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_window_grads_match_pytorch(dtype, tol, B, H, W, shapes, n_threads):
    """atlas_scan.grads_fwd / grads_bwd against _window_grads and its autograd: outputs, and
    dk, dv, dgamma and the weights' gradient (added into both packed buffers), weights
    stored short side first (tall and wide), MLP and linear, one token, one row."""
    from rnnzoo.ops.atlas import _pack, _unpack
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    W0 = [r(H, i, o) / i ** 0.5 for i, o in shapes]
    Pg = [(r(B, H, i, o) * 0.3).requires_grad_() for i, o in shapes]
    k, v = r(B, H, W, shapes[0][0]).requires_grad_(), r(B, H, W, shapes[-1][1]).requires_grad_()
    g = torch.rand(B, H, W, generator=gen, dtype=dtype).requires_grad_()
    want = _window_grads([w0 + p for w0, p in zip(W0, Pg)], k, v, g)
    douts = [r(*t.shape) for t in (k, *want)]
    loss = sum((d * t).sum() for d, t in zip(douts, (k, *want)))
    want_grads = torch.autograd.grad(loss, [k, v, g, *Pg])
    lib = atlas_scan.load()
    assert lib is not None
    W01, W02 = W0[0], (W0[1] if len(W0) > 1 else None)
    with torch.no_grad(), threads(n_threads):
        Pp = _pack(Pg).contiguous()
        out = atlas_scan.grads_fwd(lib, Pp, W01, W02, k, v, g)
        got = (out[1], out[5], out[6]) if W02 is not None else out[1:]
        dPa, dPb = torch.zeros_like(Pp), r(*Pp.shape)
        dPb0 = dPb.clone()
        saved = out[:5] if W02 is not None else out[:1]
        dX1, dG1s = (douts[1], douts[2]) if W02 is not None else (None, None)
        dk, dv, dg = atlas_scan.grads_bwd(lib, Pp, W01, W02, k, g, saved, douts[0], dX1, dG1s,
                                          douts[-1], dPa, dPb)
    names = [f"out{i}" for i in range(len(want))]
    assert_close(got, want, names, tol)
    dP = [*_unpack(dPa, shapes), *_unpack(dPb - dPb0, shapes)]
    assert_close([dk, dv, dg, *dP], [*want_grads, *want_grads[3:]],
                 ["dk", "dv", "dg", *[f"dP{i}" for i in range(2 * len(shapes))]], tol)
