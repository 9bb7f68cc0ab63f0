"""S4D (Gu et al. 2022): convolution kernel, zero-order hold, initialisations."""

import math

import pytest
import torch
from _twice import check_layer_twice, check_twice

import rnnzoo
from rnnzoo.layers.s4d import _CausalFFTConv, _Vandermonde, as_real, s4d_imag_init, vandermonde


def _layer(init="lin", d_model=3, d_state=8):
    torch.manual_seed(0)
    return rnnzoo.create("s4d", d_model=d_model, d_state=d_state, init=init).double()


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_conv_kernel_equals_scan_impulse_response(init):
    layer = _layer(init)
    T = 200
    impulse = torch.zeros(1, T, layer.d_model, dtype=torch.float64)
    impulse[:, 0] = 1.0
    for mode in ("scan", "sequential"):
        s, _ = layer.ssm(impulse, layer.init_state(1, dtype=torch.float64), mode)
        response = s[0] - layer.D * impulse[0]                        # (T, H)
        assert (response.T - layer.kernel(T, torch.float64)).abs().max() < 1e-12


def test_zero_order_hold_is_exact_for_a_constant_input():
    """For u = 1 the continuous SSM gives h(t) = (exp(A t) - 1) / A exactly; ZOH samples it at
    t = (k + 1) dt (a bilinear discretisation would not)."""
    layer = _layer()
    T = 50
    A_bar, B_bar, dtA, C = layer.discretize(torch.float64)
    A = dtA / layer.log_dt.exp().unsqueeze(-1)
    dt = layer.log_dt.exp().unsqueeze(-1).unsqueeze(-1)
    t = dt * torch.arange(1, T + 1, dtype=torch.float64)                       # (H, 1, T)
    h_exact = (torch.exp(A.unsqueeze(-1) * t) - 1) / A.unsqueeze(-1)           # (H, N2, T)
    s_exact = 2 * (C.unsqueeze(-1) * h_exact).sum(1).real.T + layer.D          # (T, H)
    u = torch.ones(1, T, layer.d_model, dtype=torch.float64)
    for mode in layer.modes:
        s, _ = layer.ssm(u, layer.init_state(1, dtype=torch.float64), mode)
        assert (s[0] - s_exact).abs().max() < 1e-10


def test_initialisations():
    N = 16
    n = torch.arange(N // 2, dtype=torch.float64)
    assert torch.allclose(s4d_imag_init(N, "lin"), math.pi * n)
    assert torch.allclose(s4d_imag_init(N, "inv"), N / math.pi * (N / (2 * n + 1) - 1))
    layer = rnnzoo.create("s4d", d_model=2, d_state=N, init="inv")
    A_bar = layer.discretize()[0]
    assert (A_bar.abs() < 1).all()  # Re(A) = -1/2 < 0: stable
    with pytest.raises(ValueError, match="init must be 'lin' or 'inv', got 'foo'"):
        rnnzoo.create("s4d", d_model=2, init="foo")
    with pytest.raises(ValueError, match="d_state must be a positive even int"):
        rnnzoo.create("s4d", d_model=2, d_state=5)


def test_conv_equals_scan_long_with_state_and_lengths():
    layer = _layer("inv", d_model=4, d_state=16)
    x = torch.randn(3, 300, 4, dtype=torch.float64)
    h0 = torch.randn(3, 4, 8, dtype=torch.complex128)
    lengths = torch.tensor([300, 17, 0])
    y_s, h_s = layer(x, h0, mode="scan", lengths=lengths)
    y_c, h_c = layer(x, h0, mode="conv", lengths=lengths)
    assert (y_s - y_c).abs().max() < 1e-10 and (h_s - h_c).abs().max() < 1e-10
    assert torch.equal(h_c[2], h0[2])


def test_conv_and_kernel_make_their_tensors_on_the_inputs_device():
    """The Vandermonde powers were made on the CPU whatever the device (a CUDA input failed);
    on the meta device every tensor must be meta, so nothing is computed."""
    layer = _layer("inv", d_model=4, d_state=16).to("meta")
    y, h = layer(torch.randn(2, 9, 4, dtype=torch.float64, device="meta"), mode="conv")
    assert y.is_meta and h.is_meta and y.shape == (2, 9, 4)
    assert layer.kernel(9).is_meta


def test_conv_nonfinite_input_does_not_spread_through_the_fft():
    """An FFT convolution spreads one NaN or inf to every step; the conv mode convolves finite
    values and makes outputs NaN from that step on, as the scan does (ops.finite)."""
    layer = _layer("inv", d_model=4, d_state=16)
    x = torch.randn(2, 40, 4, dtype=torch.float64)
    y_clean, _ = layer(x, mode="conv")
    for fill in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[0, 25, 1] = fill
        y, h = layer(x_bad, mode="conv")
        y_scan, h_scan = layer(x_bad, mode="scan")
        assert (y[0, :25] - y_clean[0, :25]).abs().max() < 1e-10
        assert torch.equal(y[1], y_clean[1]) and torch.isnan(y[0, 25:]).all()
        assert not torch.isfinite(y_scan[0, 25]).all() and not torch.isfinite(h_scan[0]).all()
        assert torch.isnan(h[0]).all() and torch.isfinite(h[1]).all()


def test_vandermonde_is_the_complex_powers_in_real_form():
    """The conv mode's powers exp(dtA l) from real exp, cos, sin, and as_real(w) . P the
    real part of sum_n w_n exp(dtA_n l)."""
    torch.manual_seed(0)
    dtA = torch.complex(-torch.rand(3, 5, dtype=torch.float64), 40 * torch.randn(3, 5, dtype=torch.float64))
    w = torch.randn(3, 5, dtype=torch.complex128)
    P = vandermonde(dtA, 50)
    want = torch.exp(dtA.unsqueeze(-1) * torch.arange(50, dtype=torch.float64))
    assert P.shape == (3, 10, 50)
    assert torch.allclose(torch.complex(*P.chunk(2, -2)), want, atol=1e-12)
    assert torch.allclose(torch.einsum("hm,hml->hl", as_real(w), P),
                          torch.einsum("hn,hnl->hl", w, want).real, atol=1e-12)


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).requires_grad_()


def test_vandermonde_and_fft_conv_second_derivatives():
    """create_graph runs their `twice` (autograd through the plain forms)."""
    a = (_r(2, 3, seed=1) * 0.3).detach().requires_grad_()
    check_twice(lambda a, b: _Vandermonde.apply(a, b, 5), (a, _r(2, 3)))
    check_twice(_CausalFFTConv.apply, (_r(2, 5, 3, 2), _r(3, 2, 5, seed=1)))


def test_s4d_modes_second_derivative():
    """sequential and conv differentiable twice, in x and the parameters."""
    layer = rnnzoo.create("s4d", d_model=2, d_state=4).double()
    x = _r(1, 5, 2, seed=2)
    for mode in ("sequential", "conv"):
        check_layer_twice(layer, x, mode)
