"""Liquid-S4 (Hasani et al. 2022): S4D at liquid_degree=1, the liquid recurrence's
input-correlation terms in the kernel, the kernel against its own recurrent reading."""

import pytest
import torch

import rnnzoo

F64 = torch.float64


def make(degree=2, kernel="kb", d_model=3, d_state=6, seed=0):
    torch.manual_seed(seed)
    layer = rnnzoo.create("liquid_s4", d_model=d_model, d_state=d_state, liquid_degree=degree,
                          liquid_kernel=kernel, chunk_size=4).double()
    with torch.no_grad():  # dt large enough that lagged terms are far from zero
        layer.log_dt.fill_(-1.0)
    return layer


def state(layer, batch, g):
    h, c = layer.init_state(batch, dtype=F64)
    return torch.randn(h.shape, generator=g, dtype=h.dtype), torch.randn(c.shape, generator=g,
                                                                         dtype=F64)


@pytest.mark.parametrize("mode", ["sequential", "scan", "conv"])
def test_degree_one_is_s4d_on_the_same_weights(mode):
    """No correlation terms: the layer is S4D, output and state, from a given state."""
    liquid = make(degree=1)
    s4d = rnnzoo.create("s4d", d_model=3, d_state=6, chunk_size=4).double()
    missing = s4d.load_state_dict(liquid.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 13, 3, generator=g, dtype=F64)
    h0, c0 = state(liquid, 2, g)
    y, (h, c) = liquid(x, (h0, c0), mode=mode)
    y_ref, h_ref = s4d(x, h0[:, :, 0], mode=mode)
    assert (y - y_ref).abs().max() < 1e-12 and (h[:, :, 0] - h_ref).abs().max() < 1e-12
    assert torch.equal(c[..., 0], x[:, -1])


def liquid_recurrence(layer, u):
    """The unapproximated linearised LTC SSM, h_t = (A_bar + B_bar u_t) h_{t-1} + B_bar u_t,
    s_t = 2 Re(C . h_t) + D u_t, as a plain loop. u: (T, H) -> s: (T, H)."""
    A_bar, B_bar, _, C = layer.discretize(F64)
    h = torch.zeros_like(A_bar)
    out = []
    for u_t in u:
        h = (A_bar + B_bar * u_t[:, None]) * h + B_bar * u_t[:, None]
        out.append(2 * (C * h).sum(-1).real + layer.D * u_t)
    return torch.stack(out)


def second_order(fn, T, H, t_out):
    """d^2 s_{t_out} / du_i du_j at u = 0, summed over channels: (T, T)."""
    def f(flat):
        return fn(flat.view(T, H))[t_out].sum()
    hess = torch.autograd.functional.hessian(f, torch.zeros(T * H, dtype=F64))
    return hess.view(T, H, T, H).diagonal(dim1=1, dim2=3).sum(-1)


@pytest.mark.parametrize("mode", ["sequential", "conv"])
def test_kernel_holds_the_liquid_recurrences_consecutive_pair_terms(mode):
    """The coefficient of u_i u_{i+1} in s_t is the liquid recurrence's own (C A^{t-i-1} B^2);
    every other pair's, kept by the full recurrence, is dropped (degree 2, kb)."""
    layer = make(degree=2)
    T, H = 7, 3

    def run(u):
        h = layer.init_state(1, dtype=F64)
        return layer.ssm(u.unsqueeze(0), h, mode)[0][0]

    got = second_order(run, T, H, T - 1)
    full = second_order(lambda u: liquid_recurrence(layer, u), T, H, T - 1)
    for i in range(T):
        for j in range(T):
            if abs(i - j) == 1:
                assert abs(got[i, j] - full[i, j]) < 1e-12 and abs(full[i, j]) > 1e-4
            elif i != j:
                assert got[i, j] == 0 and abs(full[i, j]) > 1e-6
    # the kernel's closed form: K^(2)_l = 2 Re(sum_n C_n A_bar^l B_bar^2) at pair (t-1-l, t-l)
    A_bar, B_bar, _, C = layer.discretize(F64)
    for lag in range(T - 1):
        want = (2 * (C * A_bar ** lag * B_bar ** 2).sum(-1).real).sum()
        assert abs(got[T - 2 - lag, T - 1 - lag] - want) < 1e-12


def test_polyb_keeps_only_the_lag_zero_correlation():
    layer = make(degree=2, kernel="polyb")
    T, H = 6, 3
    got = second_order(lambda u: layer.ssm(u.unsqueeze(0), layer.init_state(1, dtype=F64),
                                           "sequential")[0][0], T, H, T - 1)
    A_bar, B_bar, _, C = layer.discretize(F64)
    assert abs(got[T - 2, T - 1] - (2 * (C * B_bar ** 2).sum(-1).real).sum()) < 1e-12
    off = got.clone()
    off[T - 2, T - 1] = off[T - 1, T - 2] = 0
    assert off.abs().max() == 0


@pytest.mark.parametrize("kernel", ["kb", "polyb"])
@pytest.mark.parametrize("degree", [1, 3])
def test_conv_kernel_equals_its_recurrent_reading(kernel, degree):
    """FFT convolution with the kernels K^(p) against the per-degree recurrence, with an
    initial state, right padding and a carried correlation state."""
    layer = make(degree=degree, kernel=kernel, d_model=4, d_state=8)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, 4, generator=g, dtype=F64)
    st = state(layer, 3, g)
    lengths = torch.tensor([40, 9, 0])
    y_ref, (h_ref, c_ref) = layer(x, st, mode="sequential", lengths=lengths)
    for mode in ("scan", "conv"):
        y, (h, c) = layer(x, st, mode=mode, lengths=lengths)
        assert (y - y_ref).abs().max() < 1e-10 and (h - h_ref).abs().max() < 1e-10
        assert torch.equal(c, c_ref)
    assert torch.equal(c_ref[2], st[1][2]) and torch.equal(h_ref[2], st[0][2])
    assert torch.allclose(c_ref[1, :, 0], x[1, 8])


def test_correlation_state_carries_the_products():
    layer = make(degree=3)
    x = torch.randn(1, 5, 3, dtype=F64)
    _, (_, c) = layer(x, mode="sequential")
    want = torch.stack([x[0, 4], x[0, 4] * x[0, 3], x[0, 4] * x[0, 3] * x[0, 2]], -1)
    assert torch.allclose(c[0], want, atol=0, rtol=1e-15)


def test_options_are_checked():
    with pytest.raises(ValueError, match="liquid_kernel must be one of"):
        rnnzoo.create("liquid_s4", d_model=2, liquid_kernel="foo")
    with pytest.raises(ValueError, match="liquid_degree"):
        rnnzoo.create("liquid_s4", d_model=2, liquid_degree=0)
