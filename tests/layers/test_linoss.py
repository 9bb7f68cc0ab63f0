"""LinOSS (Rusch & Rus 2025): the paper's IM and IMEX steps as a plain loop, the IMEX
energy conservation and the IM dissipation."""

import pytest
import torch
import torch.nn.functional as F

import rnnzoo

F64 = torch.float64


def make(discretization, d_model=3, d_state=5, seed=0):
    torch.manual_seed(seed)
    layer = rnnzoo.create("linoss", d_model=d_model, d_state=d_state,
                          discretization=discretization).double()
    with torch.no_grad():
        layer.A_hat.copy_(0.05 + 1.5 * torch.rand(d_state, dtype=F64))
        layer.dt_hat.copy_(torch.randn(d_state, dtype=F64))
    return layer


def oracle(layer, x, y, z):
    """The paper's equations, one oscillator step at a time, in float64."""
    A = layer.A_hat.detach()
    dt = torch.sigmoid(layer.dt_hat.detach())
    B, C, D = layer.B.detach(), layer.C.detach(), layer.D.detach()
    out = []
    for t in range(x.shape[1]):
        u = x[:, t]
        Bu = u @ B.T
        if layer.discretization == "IM":  # z_n = z + dt(-A y_n + Bu), y_n = y + dt z_n
            z = (z - dt * A * y + dt * Bu) / (1 + dt * dt * A)
        else:                              # z_n = z + dt(-A y + Bu)
            z = z + dt * (-A * y + Bu)
        y = y + dt * z
        s = y @ C.T + D * u
        out.append(F.glu(layer.out_proj(F.gelu(s)), dim=-1))
    return torch.stack(out, 1), y, z


@pytest.mark.parametrize("discretization", ["IM", "IMEX"])
@pytest.mark.parametrize("mode", ["sequential", "scan"])
def test_matches_the_papers_equations(discretization, mode):
    layer = make(discretization)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 37, 3, generator=g, dtype=F64)
    y0, z0 = torch.randn(2, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)
    with torch.no_grad():
        want, y_want, z_want = oracle(layer, x, y0, z0)
        got, (y, z) = layer(x, (y0, z0), mode=mode)
    err = max((got - want).abs().max().item(), (y - y_want).abs().max().item(),
              (z - z_want).abs().max().item())
    assert err < 1e-12, err


def test_imex_step_scan_and_gradients_agree():
    """The conformance suite runs the default (IM); the IMEX coefficients get the same checks."""
    layer = make("IMEX")
    x = torch.randn(2, 9, 3, dtype=F64, requires_grad=True)
    y_seq, s_seq = layer(x, mode="sequential")
    y_scan, s_scan = layer(x, mode="scan")
    assert (y_seq - y_scan).abs().max() < 1e-12
    g_seq = torch.autograd.grad((y_seq ** 2).sum() + s_seq[0].sum(), [x, layer.A_hat])
    g_scan = torch.autograd.grad((y_scan ** 2).sum() + s_scan[0].sum(), [x, layer.A_hat])
    for a, b in zip(g_seq, g_scan):
        assert (a - b).abs().max() < 1e-10
    s, ys = None, []
    for t in range(9):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t)
    assert (torch.stack(ys, 1) - y_seq).abs().max() < 1e-12


def _hand_built(discretization):
    layer = rnnzoo.create("linoss", d_model=2, d_state=4, discretization=discretization).double()
    with torch.no_grad():
        layer.A_hat.copy_(torch.tensor([0.01, 0.5, 2.0, 3.0], dtype=F64))
        layer.dt_hat.copy_(torch.logit(torch.tensor([0.9, 0.3, 0.6, 0.95], dtype=F64)))
    A = layer.A_hat.detach()
    dt = torch.sigmoid(layer.dt_hat.detach())
    state = (torch.tensor([[1.0, -0.5, 0.25, 2.0]], dtype=F64),
             torch.tensor([[0.3, 0.7, -1.0, 0.1]], dtype=F64))
    return layer, A, dt, state


def _trajectory(layer, state, steps=10_000, every=100):
    """(y, z) every `every` steps of free (zero-input) motion, by the scan."""
    x = torch.zeros(1, every, layer.d_model, dtype=F64)
    ys, zs = [state[0]], [state[1]]
    with torch.no_grad():
        for _ in range(steps // every):
            _, state = layer(x, state, mode="scan")
            ys.append(state[0])
            zs.append(state[1])
    return torch.cat(ys), torch.cat(zs)


def test_imex_conserves_the_oscillator_energy():
    """Rusch & Rus: IMEX is symplectic. With no input, z^2 - dt A y z + A y^2 (the
    modified energy of the symplectic-Euler map) stays put over 10k steps, while the
    oscillators swing through many periods."""
    layer, A, dt, state = _hand_built("IMEX")
    y, z = _trajectory(layer, state)
    energy = z * z - dt * A * y * z + A * y * y
    drift = ((energy - energy[0]) / energy[0]).abs().max().item()
    assert drift < 1e-6, drift
    assert (y.max(0).values > 0).all() and (y.min(0).values < 0).all()  # they oscillate
    # the IM scheme run from the same state loses that energy
    layer_im, *_ = _hand_built("IM")
    y, z = _trajectory(layer_im, state)
    energy_im = z * z - dt * A * y * z + A * y * y
    assert (energy_im[-1] / energy_im[0]).max() < 0.5


def test_im_dissipates_the_oscillator_energy():
    """Rusch & Rus: IM's eigenvalues have modulus 1 / sqrt(1 + dt^2 A) < 1, so with no input
    z^2 + A y^2 shrinks by exactly 1 / (1 + dt^2 A) every step: never increasing."""
    layer, A, dt, state = _hand_built("IM")
    y, z = _trajectory(layer, state, steps=2000, every=100)
    energy = z * z + A * y * y
    k = torch.arange(energy.shape[0], dtype=F64).unsqueeze(1) * 100
    want = energy[0] * (1 + dt * dt * A) ** (-k)
    assert ((energy - want).abs() <= 1e-9 * energy[0]).all()
    assert (energy[1:] <= energy[:-1]).all()


def test_bad_options():
    with pytest.raises(ValueError, match="discretization must be one of"):
        rnnzoo.create("linoss", d_model=4, discretization="explicit")
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        rnnzoo.create("linoss", d_model=4, d_state=0)
