"""S5 (Smith et al. 2023): the diagonalised MIMO SSM equals the dense real HiPPO-N system,
and the bidirectional option."""

import pytest
import torch

import rnnzoo
from rnnzoo.layers.base import valid_mask
from rnnzoo.layers.s5 import hippo_n, hippo_n_eig


def test_hippo_n_is_the_normal_part_of_hippo_legs_and_its_eigendecomposition():
    N = 8
    n = torch.arange(N, dtype=torch.float64)
    legs = -torch.where(n.view(-1, 1) > n.view(1, -1),
                        torch.sqrt((2 * n.view(-1, 1) + 1) * (2 * n.view(1, -1) + 1)),
                        torch.diag(n + 1))
    P = torch.sqrt(n + 0.5)
    assert torch.allclose(hippo_n(N), legs + P.view(-1, 1) * P.view(1, -1), atol=1e-12)
    lam, V = hippo_n_eig(N)
    full_V, full_lam = torch.cat([V, V.conj()], 1), torch.cat([lam, lam.conj()])
    rebuilt = full_V @ torch.diag(full_lam) @ full_V.conj().T
    assert torch.allclose(rebuilt.real, hippo_n(N), atol=1e-10) and rebuilt.imag.abs().max() < 1e-10
    assert torch.allclose(lam.real, torch.full_like(lam.real, -0.5))


def test_diagonal_ssm_equals_the_dense_real_hippo_n_system():
    """With one dt for all states, h~ = V^H h and y = 2 Re(C~ h~) equal the real system
    h_t = expm(A dt) h_{t-1} + A^-1 (expm(A dt) - I) B u_t, y_t = C h_t, A = blockdiag(HiPPO-N)."""
    torch.manual_seed(0)
    H, P, blocks, T = 3, 6, 2, 40
    layer = rnnzoo.create("s5", d_model=H, d_state=P, blocks=blocks).double()
    with torch.no_grad():
        layer.log_dt.fill_(-2.0)
        layer.D.zero_()
    lam, V = hippo_n_eig(2 * P // blocks)
    V = torch.block_diag(*[V] * blocks)
    B_c = torch.view_as_complex(layer.B.contiguous())
    C_c = torch.view_as_complex(layer.C[0].contiguous())
    B_real, C_real = 2 * (V @ B_c).real, 2 * (C_c @ V.conj().T).real
    A = torch.block_diag(*[hippo_n(2 * P // blocks)] * blocks)
    dt = torch.exp(torch.tensor(-2.0, dtype=torch.float64))
    A_bar = torch.linalg.matrix_exp(A * dt)
    B_bar = torch.linalg.solve(A, A_bar - torch.eye(2 * P, dtype=torch.float64)) @ B_real
    u = torch.randn(2, T, H, dtype=torch.float64)
    h, ys = torch.zeros(2, 2 * P, dtype=torch.float64), []
    for t in range(T):
        h = h @ A_bar.T + u[:, t] @ B_bar.T
        ys.append(h @ C_real.T)
    expected = torch.stack(ys, 1)
    for mode in layer.modes:
        s, _ = layer.ssm(u, layer.init_state(2, dtype=torch.float64), mode)
        # parameters are stored in float32: the match is to that rounding, not to float64
        assert (s - expected).abs().max() < 1e-6 * expected.abs().max()


def _bi(seed=0):
    torch.manual_seed(seed)
    layer = rnnzoo.create("s5", d_model=3, d_state=4, blocks=2, bidirectional=True).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def test_bidirectional_is_forward_plus_flipped_backward():
    layer = _bi()
    x = torch.randn(2, 15, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.complex128)
    fwd = rnnzoo.create("s5", d_model=3, d_state=4, blocks=2).double()
    fwd.load_state_dict({k: (v[:1] if k == "C" else v) for k, v in layer.state_dict().items()})
    with torch.no_grad():
        fwd.D.zero_()
    bwd = rnnzoo.create("s5", d_model=3, d_state=4, blocks=2).double()
    bwd.load_state_dict({k: (v[1:] if k == "C" else v) for k, v in layer.state_dict().items()})
    with torch.no_grad():
        bwd.D.zero_()
    s_f, h_f = fwd.ssm(x, h0, "scan")
    s_b, _ = bwd.ssm(x.flip(1), torch.zeros_like(h0), "scan")
    expected = s_f + s_b.flip(1) + layer.D * x
    for mode in layer.modes:
        s, h = layer.ssm(x, h0, mode)
        assert (s - expected).abs().max() < 1e-12 and (h - h_f).abs().max() < 1e-12


def test_bidirectional_modes_agree_and_are_not_causal():
    layer = _bi()
    x = torch.randn(2, 11, 3, dtype=torch.float64, requires_grad=True)
    y_seq, h_seq = layer(x, mode="sequential")
    y_scan, h_scan = layer(x, mode="scan")
    assert (y_seq - y_scan).abs().max() < 1e-12 and (h_seq - h_scan).abs().max() < 1e-12
    g_seq, = torch.autograd.grad(y_seq.square().sum(), x)
    g_scan, = torch.autograd.grad(y_scan.square().sum(), x)
    assert (g_seq - g_scan).abs().max() < 1e-10
    x2 = x.detach().clone()
    x2[:, -1] += 1.0  # the last input reaches the first output
    assert (layer(x2)[0][:, 0] - y_scan[:, 0]).abs().min() > 1e-8


def test_bidirectional_lengths_equal_each_sequence_alone():
    layer = _bi()
    T = 9
    lengths = torch.tensor([9, 4, 0])
    x = torch.randn(3, T, 3, dtype=torch.float64)
    x_pad = torch.where(valid_mask(lengths, T).unsqueeze(-1), x, 100.0)
    for mode in layer.modes:
        y, h = layer(x_pad, mode=mode, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            if n:
                y_b, h_b = layer(x[b:b + 1, :n], mode=mode)
                assert (y[b, :n] - y_b[0]).abs().max() < 1e-12
                assert (h[b] - h_b[0]).abs().max() < 1e-12
            assert (y[b, n:] == 0).all()
        assert (h[2] == 0).all()


def test_bidirectional_step_raises_a_clear_error():
    layer = _bi()
    with pytest.raises(RuntimeError, match="step is undefined for a bidirectional S5"):
        layer.step(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="bidirectional must be a bool"):
        rnnzoo.create("s5", d_model=3, bidirectional=1)
