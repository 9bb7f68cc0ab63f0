"""PaTH attention's autograd nodes differentiated twice (their `twice`, ops.first_order):
_PathQKV (the fresh C path, from the layer's one projection and from a fused qkv), the C
pieces (_Pieces, _PiecesQKV) with the C block attention (_AttendHeads, with and without a
cache), and the PyTorch path's _UT and _Attend (backend.force("torch")), each against a
central difference of its first-order backward in float64 (tests/layers/_twice.py); the
first-order gradients under create_graph equal the kernels' to rounding. Small shapes:
blocks of 4 merged from sub-chunks of 2, a last short block where T is not a multiple."""

from __future__ import annotations

import contextlib

import pytest
import torch
from _twice import check_layer_twice, check_twice

import rnnzoo
import rnnzoo.ops.path_attention as path_op
from rnnzoo.ops import backend
from rnnzoo.ops.native import path_chunk

native = pytest.mark.skipif(
    path_chunk.load() is None or not backend.use_native(torch.zeros(1, dtype=torch.float64)),
    reason="no C compiler, or RNNZOO_NATIVE=0")


def _calls(monkeypatch, cls):
    n = [0]
    apply = cls.apply

    def counted(*a):
        n[0] += 1
        return apply(*a)

    monkeypatch.setattr(cls, "apply", counted)
    return n


def _inputs(B, T, H, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    qkv = r(B, T, 3, H, D)
    w = torch.nn.functional.normalize(r(B, T, H, D), dim=-1)
    beta = 2 * torch.sigmoid(r(B, T, H))
    L = 3
    cache = (r(B, H, L, D), r(B, H, L, D), torch.arange(L) < torch.tensor([[1], [L]][:B]))
    return qkv, w, beta, cache


@native
def test_fresh_layer_twice(monkeypatch):
    """The layer's chunk mode on a fresh sequence, T a multiple of the block: _PathQKV from
    the one projection (w's l2norm and beta's sigmoid in the kernel, the values cache)."""
    monkeypatch.setattr(path_op, "UT_CHUNK", 2)
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=8, num_heads=2, max_len=16,
                          chunk_size=4).double()
    calls = _calls(monkeypatch, path_op._PathQKV)
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    check_layer_twice(layer, x, "chunk")
    assert calls[0] > 0


@native
@pytest.mark.parametrize("T", [8, 7], ids=["fused", "pieces_qkv"])
def test_op_from_qkv_twice(monkeypatch, T):
    """path_attention over a fused qkv: _PathQKV (T = 8, two blocks) or _PiecesQKV and
    _AttendHeads (T = 7); outputs o and the keys as a fresh cache of 10 slots."""
    monkeypatch.setattr(path_op, "UT_CHUNK", 2)
    fused = _calls(monkeypatch, path_op._PathQKV)
    qkv, w, beta, _ = _inputs(2, T, 2, 3)

    def fn(qkv, w, beta):
        q, k, v = qkv.unbind(2)
        return path_op.path_attention(q, k, v, w, beta, scale=0.6, chunk_size=4, qkv=qkv,
                                      keys_len=10)[:2]

    check_twice(fn, tuple(t.requires_grad_() for t in (qkv, w, beta)))
    assert (fused[0] > 0) == (T == 8)


@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "cache"])
@pytest.mark.parametrize("force", [None, "torch"], ids=["native", "torch"])
def test_op_twice(monkeypatch, cached, force):
    """path_attention from separate q, k, v, w, beta (no qkv): the C pieces (_Pieces) and
    block attention (_AttendHeads), or under force("torch") _UT and _Attend; with a cache
    (one sequence's slots partly hidden), its keys and values differentiated too."""
    monkeypatch.setattr(path_op, "UT_CHUNK", 2)
    qkv, w, beta, (kc, vc, visible) = _inputs(2, 7, 2, 3)
    q, k, v = (t.contiguous() for t in qkv.unbind(2))
    args = [q, k, v, w, beta] + ([kc, vc] if cached else [])

    def fn(q, k, v, w, beta, kc=None, vc=None):
        cache = dict(k_cache=kc, v_cache=vc, cache_visible=visible) if cached else {}
        o, keys, moved = path_op.path_attention(q, k, v, w, beta, scale=0.6, chunk_size=4,
                                                **cache)
        return (o, keys) if moved is None else (o, keys, moved)

    with backend.force(force) if force else contextlib.nullcontext():
        check_twice(fn, tuple(t.requires_grad_() for t in args))


@native
def test_pieces_without_plain_raise():
    """The C pieces without their plain form (a caller that passes none): create_graph=True
    raises the documented first-order error."""
    qkv, w, beta, _ = _inputs(1, 4, 1, 3)
    q, k = (t.contiguous().requires_grad_() for t in qkv.unbind(2)[:2])
    qs = path_chunk.pieces(path_chunk.load(), q, k, w, beta, 0.6, 2, 1)[0]
    with pytest.raises(RuntimeError, match="first order only"):
        torch.autograd.grad(qs.square().sum(), q, create_graph=True)
