"""ops.path_attention (PaTH attention in chunks: UT transform, pairwise merges up to the
attention block, the cache's keys moved block by block) against scores built from explicit
Householder matrices, at chunk sizes whose blocks are merged from smaller UT chunks, which
the conformance suite's tiny config (chunk_size=4) never reaches; and its gradients."""

from __future__ import annotations

import contextlib

import pytest
import torch

import rnnzoo
import rnnzoo.ops.path_attention as path_op
from rnnzoo.ops import backend


def householder_attention(q, k, v, w, beta, scale, k_cache=None, v_cache=None, visible=None):
    """o_t = softmax_s(q_t^T H_t ... H_{s+1} k_s) v_s with H_t = I - beta_t w_t w_t^T as
    (D, D) matrices: the moved keys K~_t = H_t K~_{t-1} + k_t e_t^T, cache slots first."""
    B, T, Hn, D = q.shape
    eye = torch.eye(D, dtype=q.dtype)
    keys = q.new_zeros(B, Hn, D, 0) if k_cache is None else \
        k_cache.masked_fill(~visible[:, None, :, None], 0).transpose(-1, -2)
    values = q.new_zeros(B, Hn, 0, D) if v_cache is None else v_cache
    hidden = torch.zeros(B, keys.shape[-1], dtype=torch.bool) if visible is None else ~visible
    out = []
    for t in range(T):
        Ht = eye - beta[:, t, :, None, None] * w[:, t, :, :, None] * w[:, t, :, None, :]
        keys = torch.cat([Ht @ keys, k[:, t, :, :, None]], -1)
        values = torch.cat([values, v[:, t, :, None]], 2)
        hidden = torch.cat([hidden, torch.zeros(B, 1, dtype=torch.bool)], 1)
        s = (q[:, t, :, None, :] @ keys)[..., 0, :] * scale                  # (B, H, slots)
        p = s.masked_fill(hidden[:, None], float("-inf")).softmax(-1)
        out.append((p[..., None, :] @ values)[..., 0, :])
    L = 0 if k_cache is None else k_cache.shape[2]
    keys = keys.transpose(-1, -2)
    return torch.stack(out, 1), keys[:, :, L:], keys[:, :, :L]


def inputs(B=2, T=70, Hn=2, D=4, L=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(B, T, Hn, D), r(B, T, Hn, D), r(B, T, Hn, D)
    w = torch.nn.functional.normalize(r(B, T, Hn, D), dim=-1)
    beta = 2 * torch.sigmoid(r(B, T, Hn))
    cache = (r(B, Hn, L, D), r(B, Hn, L, D), torch.arange(L) < torch.tensor([[L // 2], [L]][:B]))
    return (q, k, v, w, beta), cache


@pytest.mark.parametrize("chunk_size,ut_chunk", [(64, 32), (48, 32), (64, 8), (16, 32)])
@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "cache"])
@pytest.mark.parametrize("force", [None, "torch"], ids=["native", "torch"])
def test_chunks_equal_explicit_householder_products(monkeypatch, chunk_size, ut_chunk, cached,
                                                    force):
    # on the CPU the blocks' softmax and products run in C (_AttendHeads); "torch": _Attend
    monkeypatch.setattr(path_op, "UT_CHUNK", ut_chunk)   # 64 from 8: three merge levels
    args, (kc, vc, visible) = inputs(L=6 if cached else 0)
    cache = dict(k_cache=kc, v_cache=vc, cache_visible=visible) if cached else {}
    with backend.force(force) if force else contextlib.nullcontext():
        o, keys, moved = path_op.path_attention(*args, scale=0.5, chunk_size=chunk_size,
                                                **cache)
    o_ref, keys_ref, moved_ref = householder_attention(*args, 0.5, **{
        "k_cache": kc, "v_cache": vc, "visible": visible} if cached else {})
    assert (o - o_ref).abs().max() < 1e-12
    assert (keys - keys_ref).abs().max() < 1e-12
    assert moved is None if not cached else (moved - moved_ref).abs().max() < 1e-12


@pytest.mark.parametrize("force", [None, "torch"], ids=["native", "torch"])
def test_merged_blocks_gradcheck(monkeypatch, force):
    monkeypatch.setattr(path_op, "UT_CHUNK", 2)          # blocks of 8 from chunks of 2
    (q, k, v, w, beta), (kc, vc, visible) = inputs(B=2, T=10, Hn=1, D=3, L=3, seed=1)
    leaves = [t.requires_grad_() for t in (q, k, v, w, beta, kc, vc)]

    def f(q, k, v, w, beta, kc, vc):
        return path_op.path_attention(q, k, v, w, beta, scale=0.7, chunk_size=8, k_cache=kc,
                                      v_cache=vc, cache_visible=visible)

    with backend.force(force) if force else contextlib.nullcontext():
        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, fast_mode=True)


def test_layer_chunk_gradients_equal_sequential_across_merged_blocks():
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=8, num_heads=2, max_len=96,
                          chunk_size=64).double()
    x = torch.randn(2, 83, 8, dtype=torch.float64)
    with torch.no_grad():
        _, state = layer(x[:, :5], mode="sequential")  # a cache of 5 tokens
    grads = []
    for mode in ("sequential", "chunk"):
        xs = x[:, 5:].clone().requires_grad_()
        ks = state[0].clone().requires_grad_()
        y, (k_cache, _, _) = layer(xs, (ks, *state[1:]), mode=mode)
        loss = (y * torch.cos(y)).sum() + (k_cache * k_cache.sin()).sum()
        grads.append(torch.autograd.grad(loss, [xs, ks, *layer.parameters()]))
    for g_seq, g_chunk in zip(*grads):
        assert (g_seq - g_chunk).abs().max() < 1e-10 * (1 + g_seq.abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, L, threads", [((2, 70, 3, 4), 6, 4),   # 6 head-rows, 4 parts
                                               ((1, 37, 1, 8), 0, 2),   # one head-row, fresh
                                               ((1, 5, 1, 4), 3, 2)])   # one short chunk
def test_head_rows_kernel_equals_the_torch_blocks(dtype, shape, L, threads):
    # the C blocks (_AttendHeads, threads over head-rows) against _Attend: outputs, moved
    # keys and every input gradient, with and without a cache
    B, T, Hn, D = shape
    (q, k, v, w, beta), (kc, vc, visible) = inputs(B=B, T=T, Hn=Hn, D=D, L=L)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v, w, beta, kc, vc)]
    g = torch.Generator().manual_seed(3)
    results = []
    for force in (None, "torch"):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with backend.force(force) if force else contextlib.nullcontext():
                q_, k_, v_, w_, b_, kc_, vc_ = leaves
                cache = dict(k_cache=kc_, v_cache=vc_, cache_visible=visible) if L else {}
                o, keys, moved = path_op.path_attention(q_, k_, v_, w_, b_, scale=0.6,
                                                        chunk_size=16, **cache)
                outs = [o, keys] + ([moved] if L else [])
                g.manual_seed(3)
                loss = sum((t * torch.randn(t.shape, generator=g, dtype=dtype)).sum()
                           for t in outs)
                used = leaves if L else leaves[:5]
                results.append((outs, torch.autograd.grad(loss, used)))
        finally:
            torch.set_num_threads(prev)
    (fast, dfast), (ref, dref) = results
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(fast + list(dfast), ref + list(dref)):
        assert (a - b).abs().max() <= tol * (1 + b.abs().max())
