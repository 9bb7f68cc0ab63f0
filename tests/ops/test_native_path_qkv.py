"""ops.path_attention._PathQKV: a fresh PaTH sequence whose length is a multiple of the block,
from the fused projection qkv (B, T, 3, H, D): the chunk pieces and the block attention in C
with q, k and v read in place from qkv, the gradient of qkv written by the two kernels, and
the keys returned as a fresh cache of keys_len slots (zero past T). Against the torch path
(backend.force("torch"): _UT, _merge, _Attend over qkv.unbind(2), the cache padded after):
the output, the keys and the gradients of qkv, w and beta, with and without a gradient
reaching the keys; float64 tight, float32 loose; one batch row, one head, a head dim with a
packed tail (35), three merge levels, 1 and 2 threads; and the layer (chunk against
sequential, output, state and every gradient) through it."""

from __future__ import annotations

import contextlib

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads
from _native_check import threads as threads_

import rnnzoo
import rnnzoo.ops.path_attention as path_op
from rnnzoo.ops import backend
from rnnzoo.ops.native import path_chunk

pytestmark = pytest.mark.skipif(path_chunk.load() is None, reason="no C compiler")

CASES = [  # B, T, H, D, chunk_size, UT chunk, keys_len, threads
    (2, 64, 3, 8, 32, 16, 80, 2),    # two blocks of 32 from 16 (one merge), 6 head-rows
    (1, 32, 1, 35, 32, 32, 32, 1),   # one head-row, one block, no merge, a packed tail
    (1, 48, 2, 4, 16, 2, 50, 2),     # three blocks of 16 from 2 (three merge levels)
]


def run(qkv, w, beta, C, Lk, force):
    q, k, v = qkv.unbind(2)
    with backend.force(force) if force else contextlib.nullcontext():
        o, keys, moved = path_op.path_attention(q, k, v, w, beta, scale=0.4, chunk_size=C,
                                                qkv=qkv, keys_len=Lk)
    assert moved is None
    return o, keys


@pytest.mark.parametrize("keys_grad", [True, False], ids=["keys-grad", "no-keys-grad"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 3e-5)])
@pytest.mark.parametrize("B,T,H,D,C,c,Lk,threads", CASES)
def test_fused_path_matches_torch(monkeypatch, dtype, tol, keys_grad, B, T, H, D, C, c, Lk,
                                  threads):
    monkeypatch.setattr(path_op, "UT_CHUNK", c)
    calls = counter(monkeypatch, path_op._PathQKV, "apply")
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3, H, D, generator=g, dtype=dtype).requires_grad_()
    w = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=dtype),
                                      dim=-1).requires_grad_()
    beta = (2 * torch.rand(B, T, H, generator=g, dtype=dtype)).requires_grad_()
    ins = [qkv, w, beta]
    res = []
    for force in (None, "torch"):
        with threads_(threads):
            o, keys = run(qkv, w, beta, C, Lk, force)
        assert keys.shape == (B, H, Lk, D) and (keys[:, :, T:] == 0).all()
        res.append(outputs_and_grads([o, keys] if keys_grad else [o], ins) + [keys])
    assert calls[0] == 1
    names = ["o", "keys", "dqkv", "dw", "dbeta"] if keys_grad else ["o", "dqkv", "dw", "dbeta",
                                                                     "keys"]
    assert_close(res[0], res[1], names, tol)


def test_layer_through_the_fused_path_matches_sequential(monkeypatch):
    calls = counter(monkeypatch, path_op._PathQKV, "apply")
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=16, num_heads=2, max_len=80,
                          chunk_size=32).double()
    x = torch.randn(2, 64, 16, dtype=torch.float64, requires_grad=True)
    ins = [x, *layer.parameters()]
    res = []
    for mode in ("chunk", "sequential"):
        y, (kc, vc, _) = layer(x, mode=mode)
        res.append(outputs_and_grads([y, kc, vc], ins))
    assert calls[0] == 1
    assert_close(res[0], res[1], ["y", "k_cache", "v_cache", "dx"]
                 + [f"d{n}" for n, _ in layer.named_parameters()], 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 3e-5)])
@pytest.mark.parametrize("B,T,H,D,C,c,Lk,threads", CASES)
def test_raw_projections_match_torch_normalised(monkeypatch, dtype, tol, B, T, H, D, C, c, Lk,
                                                threads):
    """path_attention_fresh: one projection (per head [q | k | v | w], then beta), w's
    l2norm (eps) and 2 sigmoid(beta + bias) in the chunk kernel, the projection's gradient one tensor, against
    path_attention's torch path over l2norm(w_raw) and 2 sigmoid(beta_raw + bias); one w row
    of zeros and one below eps (the floor, where the gradient is r dy)."""
    from rnnzoo.layers._delta_block import l2norm

    monkeypatch.setattr(path_op, "UT_CHUNK", c)
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(B, T, 3, H, D, generator=g, dtype=dtype)
    w_raw = 3 * torch.randn(B, T, H, D, generator=g, dtype=dtype)
    w_raw[0, 1, 0] = 0
    w_raw[0, 2, 0] *= 1e-9
    beta_raw = 2 * torch.randn(B, T, H, generator=g, dtype=dtype)
    bias = torch.randn(H, generator=g, dtype=dtype)
    proj = _proj(qkv, w_raw, beta_raw)
    ins = [t.requires_grad_() for t in (proj, bias)]
    with threads_(threads):
        o, keys = path_op.path_attention_fresh(proj, H, scale=0.4, chunk_size=C, keys_len=Lk,
                                               eps=1e-6, beta_bias=bias)
    got = outputs_and_grads([o, keys], ins)
    with backend.force("torch"):
        q, k, v, w_raw, beta_raw = path_op.proj_views(proj, H)
        o, keys, _ = path_op.path_attention(q, k, v, l2norm(w_raw, eps=1e-6),
                                            2 * torch.sigmoid(beta_raw + bias), scale=0.4,
                                            chunk_size=C, keys_len=Lk)
    want = outputs_and_grads([o, keys], ins)
    assert_close(got, want, ["o", "keys", "dproj", "dbias"], tol)


def _proj(qkv, w, beta):
    """path_attention_fresh's projection (B, T, 4 H D + H) from qkv (B, T, 3, H, D), w
    (B, T, H, D), beta (B, T, H): per head [q | k | v | w], then beta."""
    return torch.cat([torch.stack([*qkv.unbind(2), w], 3).flatten(2), beta], -1)


def test_proj_views_and_weight_agree():
    """proj_views reads back what _proj laid out, and a projection through proj_weight's
    weight is the four projections' outputs and beta's in that layout."""
    g = torch.Generator().manual_seed(9)
    B, T, H, D, d = 2, 3, 3, 4, 5
    qkv, w = torch.randn(B, T, 3, H, D, generator=g), torch.randn(B, T, H, D, generator=g)
    beta = torch.randn(B, T, H, generator=g)
    for a, b in zip(path_op.proj_views(_proj(qkv, w, beta), H), (*qkv.unbind(2), w, beta)):
        assert torch.equal(a, b)
    x = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    ws = [torch.randn(n, d, generator=g, dtype=torch.float64) for n in (H * D,) * 4 + (H,)]
    got = path_op.proj_views(x @ path_op.proj_weight(*ws, H).T, H)
    want = [(x @ t.T).view(B, T, H, D) for t in ws[:4]] + [x @ ws[4].T]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("where", ["q", "v", "w", "beta"])
def test_not_finite_inputs_take_the_marking_path(where):
    """path_attention_fresh declines (None) when any input has an inf or NaN, and the layer
    then gives the torch path's outputs and state, NaN where they read it."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 32, 3, 2, 4, generator=g)
    w_raw, beta_raw = torch.randn(2, 32, 2, 4, generator=g), torch.randn(2, 32, 2, generator=g)
    t, i = {"q": (qkv, (1, 5, 0, 1, 2)), "v": (qkv, (1, 5, 2, 1, 2)),
            "w": (w_raw, (1, 5, 1, 3)), "beta": (beta_raw, (1, 5, 0))}[where]
    t[i] = float("inf")
    proj = _proj(qkv, w_raw, beta_raw)
    assert path_op.path_attention_fresh(proj, 2, scale=0.4, chunk_size=16) is None
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=8, num_heads=2, max_len=40, chunk_size=16)
    x = torch.randn(2, 32, 8)
    x[1, 5, 3] = float("nan")
    y, state = layer(x, mode="chunk")
    with backend.force("torch"):
        y_ref, state_ref = layer(x, mode="chunk")
    for a, b in zip([y, *state], [y_ref, *state_ref]):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,T,H,D,C,c,Lk,threads", CASES)
def test_fused_forward_equals_the_two_kernels(dtype, B, T, H, D, C, c, Lk, threads):
    """path_chunk.fused_fwd (path_fused_fwd: the chunk pieces and the block attention in one
    pass) against chunk_fwd then path_fwd (ops.path_attention._attend_fwd): keys, KS, PS,
    fin, qs and P the same bits, o within a few units in the last place (the same bits with
    AVX-512; with AVX2 the two paths' P V sums round differently: 1 ulp measured), with the
    raw projections (l2norm, sigmoid, a beta bias) and with a value that is not finite
    (fin)."""
    g = torch.Generator().manual_seed(5)
    proj = torch.randn(B, T, 4 * H * D + H, generator=g, dtype=dtype)
    proj[0, T // 2, 2 * H * D] = float("inf")  # a value: fin marks its head-row
    bias = torch.randn(H, generator=g, dtype=dtype)
    q, k, v, w, beta = path_op.proj_views(proj, H)
    _, c, levels = path_op._block_sizes(C, T)
    lib, pc = path_op.native_attention.load(), path_chunk.load()
    extra = path_chunk.chunk_args(q, w, beta, 0.4, c, levels, 1e-6)
    with threads_(threads):
        got = path_chunk.fused_fwd(pc, q, k, w, beta, v, extra, bias, Lk)
        qs, k1, P, intra, fin = path_chunk.chunk_fwd(pc, q, k, w, beta, extra, v, True, bias)
        keys0 = qs.new_zeros(B, H, 0, D)
        o, keys, KS, PS = path_op._attend_fwd(lib, qs, k1, P, intra, v.transpose(1, 2), keys0,
                                              None, Lk)
    assert not torch.isfinite(fin).all()
    assert got[7].shape == (B * H * (T // C), 3 * C * D + 3 * C)  # the blocks' loaded inputs
    assert got[0].shape == o.shape and torch.equal(got[0].isfinite(), o.isfinite())
    eps = torch.finfo(dtype).eps
    ok = o.isfinite()
    torch.testing.assert_close(got[0][ok], o[ok], rtol=4 * eps, atol=4 * eps)
    for a, b in zip(got[1:7], (keys, KS, PS, fin, qs, P)):
        assert a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())
    vals = torch.full((B, H, Lk, D), 7.0, dtype=dtype)  # the values written into a cache
    with threads_(threads):
        again = path_chunk.fused_fwd(pc, q, k, w, beta, v, extra, bias, Lk, vals)
    for a, b in zip(again, got):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    assert torch.equal(vals[:, :, :T], v.transpose(1, 2)) and (vals[:, :, T:] == 7).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("keys_grad", [True, False], ids=["keys-grad", "no-keys-grad"])
@pytest.mark.parametrize("B,T,H,D,C,c,Lk,threads", CASES)
def test_fused_backward_equals_the_two_kernels(dtype, keys_grad, B, T, H, D, C, c, Lk,
                                               threads):
    """path_chunk.fused_bwd (path_fused_bwd: each block's attention backward, its piece
    gradients straight into its chunk backward) against path_bwd then path_chunk_bwd
    (ops.path_attention._attend_bwd, path_chunk.chunk_bwd): dq, dk, dv, dw, dbeta the same
    bits with AVX-512, within a few units in the last place of their scale with AVX2 (float32
    at D = 4: 0.6 ulp measured), with the raw projections and a beta bias, with and without
    a keys gradient."""
    g = torch.Generator().manual_seed(6)
    proj = torch.randn(B, T, 4 * H * D + H, generator=g, dtype=dtype)
    bias = torch.randn(H, generator=g, dtype=dtype)
    do = torch.randn(B, T, H, D, generator=g, dtype=dtype)
    dkeys = torch.randn(B, H, Lk, D, generator=g, dtype=dtype) if keys_grad else None
    q, k, v, w, beta = path_op.proj_views(proj, H)
    _, c, levels = path_op._block_sizes(C, T)
    lib, pc = path_op.native_attention.load(), path_chunk.load()
    extra = path_chunk.chunk_args(q, w, beta, 0.4, c, levels, 1e-6)
    dvals = torch.randn(B, H, Lk + 3, D, generator=g, dtype=dtype)  # a values cache's
    grads = []
    with threads_(threads):
        _, _, KS, PS, _, qs, P, IN = path_chunk.fused_fwd(pc, q, k, w, beta, v, extra, bias,
                                                          Lk)
        for fused in (True, False, "dvals"):
            dproj = torch.full_like(proj, float("nan"))  # every gradient written
            dq, dk, dv, dw, db = path_op.proj_views(dproj, H)
            if fused:
                path_chunk.fused_bwd(pc, q, k, w, beta, v, qs, P, KS, PS, IN, do, dkeys, dq,
                                     dk, dv, dw, db, extra, bias,
                                     dvals if fused == "dvals" else None)
            else:
                pieces = path_op._attend_bwd(lib, qs, P, v.transpose(1, 2), KS, PS, do, dkeys,
                                             dv.transpose(1, 2), 0)[:4]
                path_chunk.chunk_bwd(pc, q, k, w, beta, pieces, dq, dk, extra, dw, db, bias)
            grads.append(dproj)
    assert torch.isfinite(grads[0]).all()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grads[0], grads[1], rtol=8 * eps,
                               atol=8 * eps * grads[1].abs().max().item())
    # with dvals: its first T slots added to dv, the other gradients unchanged
    want = grads[0].clone()
    path_op.proj_views(want, H)[2].add_(dvals[:, :, :T].transpose(1, 2))
    assert torch.equal(grads[2], want)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 3e-5)])
@pytest.mark.parametrize("B,T,H,D,C,c,Lk,threads", CASES)
def test_fresh_values_cache_matches_write_front(monkeypatch, dtype, tol, B, T, H, D, C, c, Lk,
                                                threads):
    """path_attention_fresh(values=cache): the cache with its first T slots replaced by v,
    written by the forward kernel, equals the layer's write_front of v, and the gradients
    through it (to the projection: dv plus the cache's first T slots; to the cache: its
    other slots) equal those through write_front; o and keys as without it."""
    from rnnzoo.layers.attention import write_front

    monkeypatch.setattr(path_op, "UT_CHUNK", c)
    g = torch.Generator().manual_seed(8)
    proj = torch.randn(B, T, 4 * H * D + H, generator=g, dtype=dtype).requires_grad_()
    cache = torch.randn(B, H, Lk + 2, D, generator=g, dtype=dtype).requires_grad_()
    res = []
    for given in (True, False):
        with threads_(threads):
            out = path_op.path_attention_fresh(proj, H, scale=0.4, chunk_size=C, keys_len=Lk,
                                               values=cache if given else None)
        if not given:
            out = (*out, write_front(cache, path_op.proj_views(proj, H)[2].transpose(1, 2)))
        res.append(outputs_and_grads(list(out), [proj, cache]))
    assert_close(res[0], res[1], ["o", "keys", "values", "dproj", "dcache"], tol)


def test_fused_kernels_run_on_torchs_team(monkeypatch):
    """At 2 threads both fused kernels' ranges go to torch's OpenMP team (ops.native.team:
    their sizes in one array keep them within its 32 integer arguments), not a pool thread
    of ours beside libgomp's spinning workers; skipped where the team path is unusable."""
    from rnnzoo.ops.native import load, team

    if team.team(load) is None:
        pytest.skip("no team path here (libgomp not loaded or another platform)")
    ran, orig = [], team.run

    def spy(fn, args, ld):
        ran.append((fn.__name__, orig(fn, args, ld)))
        return ran[-1][1]

    monkeypatch.setattr(team, "run", spy)
    proj = torch.randn(2, 32, 4 * 2 * 8 + 2, requires_grad=True)
    with threads_(2):
        o, keys = path_op.path_attention_fresh(proj, 2, scale=0.4, chunk_size=16)
        o.sum().backward()
    assert ("path_fused_fwd_f32", True) in ran and ("path_fused_bwd_f32", True) in ran
