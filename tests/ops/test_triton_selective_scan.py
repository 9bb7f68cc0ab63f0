"""ops.triton.selective_scan against layers.mamba.selective_scan, under TRITON_INTERPRET=1 on CPU."""

import pytest
import torch

from rnnzoo.layers.mamba import selective_scan as torch_selective_scan

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def tss():
    from _triton_interp import interpreted
    return interpreted("rnnzoo.ops.triton.selective_scan")


def _inputs(Bs, T, DI, DS, h0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u, B, C, D = r(Bs, T, DI), r(Bs, T, DS), r(Bs, T, DS), r(DI)
    delta = 0.05 + 0.5 * torch.rand(Bs, T, DI, generator=g, dtype=dtype)
    A = -2 * torch.rand(DI, DS, generator=g, dtype=dtype)
    return [u, delta, A, B, C, D, r(Bs, DI, DS) if h0 else None]


def _compare(fn, args, neg, tol):
    outs = []
    for scan, kw in ((fn, {}), (torch_selective_scan, dict(chunk_size=3))):
        xs = [x.detach().clone().requires_grad_() if x is not None else None for x in args]
        y, h = scan(*xs, allow_neg_eigval=neg, **kw)
        g = torch.Generator().manual_seed(1)
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() \
            + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
        loss.backward()
        outs.append([y, h] + [x.grad for x in xs if x is not None])
    worst = 0.0
    for x, y in zip(*outs):
        assert x.shape == y.shape and x.dtype == y.dtype
        worst = max(worst, ((x - y).abs().max() / (1 + y.abs().max())).item())
    assert worst < tol, worst
    return worst


@pytest.mark.parametrize("neg,h0,T", [(False, True, 7), (True, True, 7), (False, False, 1),
                                      (True, False, 6)])
def test_matches_torch(tss, neg, h0, T):
    _compare(tss.selective_scan, _inputs(2, T, 5, 3, h0), neg, 1e-5)  # d_state 3: padded to 4


def test_small_tiles_strided_inputs(tss, monkeypatch):
    """Tiles of 2 steps x 2 channels; B and C are non-contiguous views (split of one tensor)."""
    monkeypatch.setattr(tss, "_CONFIG_OVERRIDE", (2, 2))
    u, delta, A, _, _, D, h0 = _inputs(2, 5, 3, 2, True)
    BC = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3))
    B, C = BC.split(2, dim=-1)
    _compare(tss.selective_scan, [u, delta, A, B, C, D, h0], False, 1e-5)


def test_float64(tss):
    assert _compare(tss.selective_scan, _inputs(1, 5, 3, 2, True, torch.float64), True,
                    1e-12) < 1e-12
