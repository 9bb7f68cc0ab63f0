"""coRNN, LEM (Rusch & Mishra) and UnICORNN: the papers' steps, computed by hand from their
equations, and UnICORNN's exact time reversibility."""

from __future__ import annotations

import torch
from _cells import F64, H, T, data, perturbed, randomised, step


def test_cornn_step_solves_the_imex_equation():
    """Rusch & Mishra 2021: z_n = z_{n-1} + dt (tanh(.) - gamma y_{n-1} - eps z_n),
    y_n = y_{n-1} + dt z_n: the damping is implicit in z_n."""
    dt, gamma, eps = 0.3, 0.7, 2.5
    cell = randomised("cornn", dt=dt, gamma=gamma, epsilon=eps)
    x, y0, z0 = (torch.randn(3, n, dtype=F64) for n in (4, 5, 5))
    y1, z1 = step(cell, x, (y0, z0))
    force = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + y0 @ cell.weight_hh.T + cell.bias_hh
                       + z0 @ cell.weight_ch.T + cell.bias_ch)
    residual = z1 - z0 - dt * (force - gamma * y0 - eps * z1)
    torch.testing.assert_close(residual, torch.zeros_like(residual), atol=1e-14, rtol=0)
    torch.testing.assert_close(y1, y0 + dt * z1, atol=1e-14, rtol=0)
    explicit = randomised("cornn", dt=dt, gamma=gamma, epsilon=eps, implicit_damping=False)
    assert not torch.allclose(step(explicit, x, (y0, z0))[1], z1)  # the two schemes differ


def test_lem_step_is_the_papers():
    """Rusch et al. 2022: y_n reads the new z_n."""
    dt = 0.7
    cell = randomised("lem", dt=dt)
    u, y0, z0 = (torch.randn(3, n, dtype=F64) for n in (4, 5, 5))
    V1, V2, Vz, Vy = cell.weight_ih.chunk(4)
    c1, c2, cz, cy = cell.bias_ih.chunk(4)
    W1, W2, Wz = cell.weight_hh.chunk(3)
    b1, b2, bz = cell.bias_hh.chunk(3)
    dt_y = dt * torch.sigmoid(y0 @ W1.T + b1 + u @ V1.T + c1)
    dt_z = dt * torch.sigmoid(y0 @ W2.T + b2 + u @ V2.T + c2)
    z1 = (1 - dt_z) * z0 + dt_z * torch.tanh(y0 @ Wz.T + bz + u @ Vz.T + cz)
    y1 = (1 - dt_y) * y0 + dt_y * torch.tanh(z1 @ cell.weight_ch.T + cell.bias_ch + u @ Vy.T + cy)
    got_y, got_z = step(cell, u, (y0, z0))
    torch.testing.assert_close(got_z, z1, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(got_y, y1, rtol=1e-13, atol=1e-14)


def test_unicornn_runs_backwards_exactly():
    """Rusch & Mishra 2021: the symplectic-Euler step is invertible,
    y_{n-1} = y_n - dt s z_n,  z_{n-1} = z_n + dt s [tanh(w y_{n-1} + V u_n + b) + alpha y_{n-1}],
    so the initial state is recovered from the final one and the inputs alone."""
    cell = perturbed("unicornn", dt=0.4, alpha=2.0)
    x, s0 = data(n_state=(H, H))
    _, (y, z) = cell.loop(x, s0)
    step = cell.dt * torch.sigmoid(cell.weight_ch)
    pre = x @ cell.weight_ih.T + cell.bias_ih
    for t in reversed(range(T)):
        y = y - step * z
        z = z + step * (torch.tanh(cell.weight_hh * y + pre[:, t]) + cell.alpha * y)
    assert torch.allclose(y, s0[0], atol=1e-12, rtol=0)
    assert torch.allclose(z, s0[1], atol=1e-12, rtol=0)
