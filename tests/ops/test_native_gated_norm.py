"""ops.native.gated_norm: the C output heads of mamba2 (skip, gate, group RMSNorm, the gate
before or after the norm; the gate alone without gated_norm), mamba (skip and gate) and mlstm (head LayerNorm, skip, gate)
and longhorn (skip and gate) against each layer's PyTorch path under backend.force("torch"): outputs and the gradients of
the input and of every parameter, float64 to 1e-10 on 2 threads (the rows split, each part's parameter gradients summed),
float32 to 3e-5 on 1 (the SSD's C chunked backward sums in another order than the PyTorch
path's: A_log's gradient differed by 1.04e-5 relative in float32, by < 1e-10 in float64)."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads
from _native_check import threads as threads_
from _second_order import second_order

from rnnzoo import create
from rnnzoo.ops import backend
from rnnzoo.ops.native import gated_norm

CASES = [("mamba2", dict(d_model=8, d_state=4, head_dim=4, chunk_size=4)),
         ("mamba2", dict(d_model=8, d_state=4, head_dim=4, n_groups=2, chunk_size=4)),
         ("mamba2", dict(d_model=8, d_state=4, head_dim=4, gated_norm=False, chunk_size=4)),
         ("mamba2", dict(d_model=8, d_state=4, head_dim=4, n_groups=2, norm_before_gate=True,
                         chunk_size=4)),
         ("mamba", dict(d_model=8, d_state=4, dt_rank=2)),
         ("mlstm", dict(d_model=8, num_heads=2, qkv_blocksize=4, chunk_size=4)),
         ("longhorn", dict(d_model=8, d_state=4, d_conv=3, expand=1, dt_rank=2))]


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, gated_norm, "rms_norm_gate", "norm_gate")


def _run(layer, x):
    y, _ = layer(x, mode=layer.auto_mode(x))
    return outputs_and_grads([y], [x, *layer.parameters()])


@pytest.mark.parametrize("dtype,tol,threads", [(torch.float64, 1e-10, 2),
                                               (torch.float32, 3e-5, 1)])
@pytest.mark.parametrize("name,opts", CASES)
def test_native_gated_norm_matches_torch(calls, dtype, tol, name, opts, threads):
    with threads_(threads):
        torch.manual_seed(0)
        layer = create(name, **opts).to(dtype)
        with torch.no_grad():  # away from the init's ones and zeros: every gradient nonzero
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(3, 9, 8, dtype=dtype, generator=torch.Generator().manual_seed(2))
        x.requires_grad_()
        got = _run(layer, x)
        assert calls[0] == 1
        with backend.force("torch"):
            want = _run(layer, x)
    assert calls[0] == 1
    names = ["y", "x", *(n for n, _ in layer.named_parameters())]
    assert_close(got, want, names, tol)


def test_native_gated_norm_not_for_half():
    """bfloat16 keeps the PyTorch path (mixed dtypes: use_native declines)."""
    layer = create("mlstm", d_model=8, num_heads=2, qkv_blocksize=4).to(torch.bfloat16)
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    assert not backend.use_native(x.float(), x)
    y, _ = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("norm", [True, False])
def test_gate_rms_reads_strided_rows(norm):
    """xs and z as slices of wider tensors (rows further apart than W: read in place) give
    what their contiguous copies give, values and every gradient, float64, 2 threads."""
    torch.manual_seed(0)
    lib = gated_norm.load()
    if lib is None:
        pytest.skip("gated_norm does not build")
    W = 6
    y = torch.randn(2, 5, W, dtype=torch.float64, requires_grad=True)
    wide = torch.randn(2, 5, 2 * W + 3, dtype=torch.float64, requires_grad=True)
    s, w = (torch.randn(W, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = torch.randn(2, 5, W, dtype=torch.float64)

    def run(xs, z):
        out = gated_norm.gate_rms(lib, y, xs, s, z, w if norm else None, 3, 1e-5, norm=norm)
        return [out, *torch.autograd.grad((out * g).sum(), (y, wide, s) + ((w,) if norm else ()))]

    with threads_(2):
        got = run(wide[..., 1:W + 1], wide[..., W + 3:])
        want = run(wide[..., 1:W + 1].contiguous(), wide[..., W + 3:].contiguous())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _leaves(*shapes):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]


@pytest.mark.parametrize("act,pre,norm,skip", [("silu", True, True, True),
                                               ("silu", False, True, False),
                                               ("sigmoid", False, True, True),
                                               (None, False, True, False),
                                               ("silu", True, False, True)])
def test_rms_gate_second_derivative(act, pre, norm, skip):
    """Under create_graph=True _RMSGate's `twice` (its PyTorch form replayed over the saved
    inputs) gives the second derivative in y, xs, s, z and w: float64 against a central
    difference and the PyTorch form's own double backward; z a strided slice."""
    lib = gated_norm.load()
    if lib is None:
        pytest.skip("gated_norm does not build")
    W, n = 6, 3
    keep = [True, skip, act is not None, skip, norm]  # y, xs, wide (z's rows), s, w

    def run(f):
        def call(*t):
            it = iter(t)
            y_, xs_, wide_, s_, w_ = (next(it) if k else None for k in keep)
            return f(y_, xs_, s_, None if wide_ is None else wide_[..., 1:W + 1], w_)
        return call

    native = run(lambda y, xs, s, z, w: gated_norm.rms_norm_gate(lib, y, xs, s, z, w, n, 1e-5,
                                                                 act, pre, norm))
    plain = run(lambda y, xs, s, z, w: gated_norm._torch_rms_gate(
        y, xs, s, z, w, n, 1e-5, gated_norm.ACTS[act], int(pre), norm))
    leaves = _leaves((2, 5, W), (2, 5, W), (2, 5, W + 2), (W,), (W,))
    inputs = [t for t, k in zip(leaves, keep) if k]
    torch.testing.assert_close(native(*inputs), plain(*inputs), rtol=1e-12, atol=1e-12)
    with threads_(2):
        second_order(native, inputs, plain)


@pytest.mark.parametrize("skip", [True, False])
def test_norm_gate_second_derivative(skip):
    """_NormGate's `twice`: the second derivative in y, xs, s, z, w and b, float64."""
    lib = gated_norm.load()
    if lib is None:
        pytest.skip("gated_norm does not build")
    W, n = 8, 4
    y, xs, s, z, w, b = _leaves((2, 5, W), (2, 5, W), (W,), (2, 5, W), (W,), (W,))

    def native(y, z, w, b, xs=None, s=None):
        return gated_norm.norm_gate(lib, y, xs, s, z, w, b, n, 1e-5)

    def plain(y, z, w, b, xs=None, s=None):
        return gated_norm._torch_norm_gate(y, xs, s, z, w, b, n, 1e-5)

    inputs = [y, z, w, b] + ([xs, s] if skip else [])
    torch.testing.assert_close(native(*inputs), plain(*inputs), rtol=1e-12, atol=1e-12)
    with threads_(2):
        second_order(native, inputs, plain)
