"""ops.native.momentum_scan.gates, Momentum DeltaNet's gates in one C pass each way, against
the layer's torch form (MomentumDeltaNet._gates): log_alpha, log_mu, beta, eta and the
gradients of g and the five per-head parameters, with and without the log_mu floor (some
entries under it) and allow_neg_eigval, odd row counts (a block of rows and a remainder),
1 and 2 threads (per-range parameter sums); float32 values in ulps over small to large
inputs (the forms without the angle, log1p(u^2) above u = 1 from the float's exponent);
infinite and NaN inputs; and the layer proven to take it on the CPU (not under
force("torch"))."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads, threads
from _second_order import second_order

from rnnzoo import create
from rnnzoo.ops import backend
from rnnzoo.ops.native import momentum_scan


def _layer(H, neg, floor, dtype):
    torch.manual_seed(0)
    layer = create("momentum_deltanet", d_model=4 * H, num_heads=H, allow_neg_eigval=neg,
                   min_log_mu=floor).to(dtype)
    with torch.no_grad():  # heads with u = eta exp(log_factor) well above and below 1
        layer.log_factor.copy_(torch.linspace(-2.5, 2.5, H, dtype=dtype))
    return layer


def _params(layer):
    return [layer.A_log, layer.Mu_log, layer.dt_bias, layer.mu_bias, layer.log_factor]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("B,T,H", [(2, 70, 4), (1, 1, 1), (3, 37, 3)])
@pytest.mark.parametrize("neg,floor", [(False, -2.0), (True, None), (False, -0.3)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_native_gates_match_torch(dtype, tol, B, T, H, neg, floor, n_threads):
    layer = _layer(H, neg, floor, dtype)
    gen = torch.Generator().manual_seed(1)
    g = (3 * torch.randn(B, T, 4 * H, generator=gen, dtype=dtype)).requires_grad_()
    ins = [g, *_params(layer)]
    lib = momentum_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(momentum_scan.gates(lib, g, *ins[1:], layer.tau, neg, floor),
                                ins)
    ref = layer._gates(g)
    if floor is not None and B * T > 1:  # the floor's cases both ways
        assert (ref[1] == floor).any() and (ref[1] > floor).any()
    want = outputs_and_grads(ref, ins)
    assert_close(got, want, ["log_alpha", "log_mu", "beta", "eta", "dg", "dA_log", "dMu_log",
                             "ddt_bias", "dmu_bias", "dlog_factor"], tol)


def test_native_gates_float32_ulps_small_to_large():
    """float32 outputs against float64, for gate inputs from 1e-6 to 80 in size (both signs)
    and log_factor from -6 to 6 (u from ~0 to ~800): eta = 1 + tanh(e / tau) within 2^-23
    (tanh's float32 rounding near -1 is an ulp of 1 in either form, torch's too); log_alpha,
    beta, log_mu within 8 ulps of the float64 functions evaluated at the kernel's own eta and
    at the float32 sums a + dt_bias, m + mu_bias (which torch's float32 form rounds as well;
    exp of a rounded -80 is off by ~30 ulps in any form), in their accurate float64 forms
    (2 log cos(atan u) in float64 is 0 where u^2 < 1e-16; -log1p(u^2) is not)."""
    H = 8
    layer = _layer(H, False, None, torch.float64)
    with torch.no_grad():
        layer.log_factor.copy_(torch.linspace(-6, 6, H, dtype=torch.float64))
    mag = torch.logspace(-6, 1.9, 500, dtype=torch.float64)
    g32 = torch.cat([mag, -mag])[:, None, None].expand(-1, 1, 4 * H).contiguous().float()
    p32 = [p.detach().float() for p in _params(layer)]
    with torch.no_grad():
        la, lm, beta, eta = momentum_scan.gates(momentum_scan.load(), g32, *p32, layer.tau)
        w_eta = layer._gates(g32.double())[3]
        assert (eta.double() - w_eta).abs().max() <= 2.0 ** -23
        a, b, m, _ = g32.chunk(4, -1)
        A, Mu, _, _, lf = (p.double() for p in p32)
        u2 = (eta.double() * lf.exp()) ** 2
        sp = lambda x: torch.nn.functional.softplus(x.double())  # noqa: E731
        w_la = -torch.log1p(u2) - A.exp() * sp(a + p32[2])
        w_beta = u2 / (1 + u2) * torch.sigmoid(b.double())
        w_lm = -Mu.exp() * sp(m + p32[3])
    for name, w, x in zip(["log_alpha", "log_mu", "beta"], [w_la, w_lm, w_beta], [la, lm, beta]):
        w32 = w.float().abs()  # the float64 value rounded: ulps of the float32 result
        ulp = (torch.nextafter(w32, torch.tensor(float("inf"))) - w32).double()
        err = ((x.double() - w) / ulp).abs()
        assert err.max() <= 8, (name, err.max().item())


def test_native_gates_non_finite_inputs():
    """inf and NaN gate inputs give torch's values (infinite inputs) or NaN where torch's do."""
    H = 2
    layer = _layer(H, False, None, torch.float32)
    vals = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0])
    g = vals[:, None, None].expand(-1, 1, 4 * H).contiguous()
    lib = momentum_scan.load()
    got = momentum_scan.gates(lib, g, *_params(layer), layer.tau)
    want = layer._gates(g)
    for name, x, w in zip(["log_alpha", "log_mu", "beta", "eta"], got, want):
        assert torch.equal(x.isnan(), w.isnan()), name
        fin = w.isfinite()
        assert torch.equal(x.isinf(), w.isinf()), name
        torch.testing.assert_close(x[fin], w[fin], rtol=1e-5, atol=1e-6, msg=name)


def test_layer_runs_the_gate_kernel_on_the_cpu(monkeypatch):
    ran = counter(monkeypatch, momentum_scan, "gates")
    layer = create("momentum_deltanet", d_model=8, num_heads=2)
    x = torch.randn(1, 5, 8)
    y = layer(x, mode="chunk")[0]
    assert ran[0] == 1
    with backend.force("torch"):
        torch.testing.assert_close(layer(x, mode="chunk")[0], y, rtol=1e-5, atol=1e-6)
    assert ran[0] == 1


@pytest.mark.parametrize("neg,floor", [(False, -2.0), (True, None)])
def test_native_gates_second_derivative(neg, floor):
    """Under create_graph=True _NativeGates's `twice` (the layer's formulas in PyTorch,
    replayed over the saved inputs) gives the second derivative in g and the five
    parameters, float64, against a central difference and the PyTorch form's own double
    backward (log_mu's floor: rows on both sides); g a transposed view."""
    lib = momentum_scan.load()
    if lib is None:
        pytest.skip("momentum_scan does not build")
    layer = _layer(3, neg, floor, torch.float64)
    gen = torch.Generator().manual_seed(1)
    gt = (3 * torch.randn(12, 5, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    ins = [gt, *(p.detach().clone().requires_grad_() for p in _params(layer))]
    fl = -float("inf") if floor is None else floor

    def native(gt, *p):
        return momentum_scan.gates(lib, gt.transpose(0, 2), *p, layer.tau, neg, floor)

    def plain(gt, *p):
        return momentum_scan._torch_gates(gt.transpose(0, 2), *p, layer.tau, neg, fl)

    for a, b in zip(native(*ins), plain(*ins)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, ins, plain)
