"""GSS (Mehta et al. 2022): the paper's gated block around a DSS as a plain loop, and the
SSM's impulse response equal to the DSS closed-form kernel."""

import pytest
import torch
import torch.nn.functional as F

import rnnzoo

F64 = torch.float64


def make(seed=0):
    torch.manual_seed(seed)
    layer = rnnzoo.create("gss", d_model=4, d_state=6, expand=3, d_ssm=2).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=F64))
    return layer


def dss(layer):
    """Lambda, dt, C, D of the DSS from the raw parameters: (H, N/2) complex, (H,), ..."""
    s = layer.ssm
    lam = torch.complex(-s.log_A_real.detach().exp(), s.A_imag.detach())
    C = torch.complex(s.C.detach()[..., 0], s.C.detach()[..., 1])
    return lam, s.log_dt.detach().exp(), C, s.D.detach()


def oracle(layer, x, h):
    """v = gelu(W_v x), u = gelu(W_u x), h_t = e^{dt lam} h + (e^{dt lam} - 1)/lam u_t,
    y = 2 Re(C h) + D u, o = W_o((W_uc y) * v), one step at a time in float64."""
    lam, dt, C, D = dss(layer)
    a = torch.exp(dt.unsqueeze(-1) * lam)
    b = (a - 1) / lam
    out = []
    for t in range(x.shape[1]):
        v = F.gelu(layer.v_proj(x[:, t]))
        u = F.gelu(layer.u_proj(x[:, t]))
        h = a * h + b * u.unsqueeze(-1)
        y = 2 * (C * h).sum(-1).real + D * u
        out.append(layer.out_proj(layer.uc_proj(y) * v))
    return torch.stack(out, 1), h


@pytest.mark.parametrize("mode", ["sequential", "scan", "conv"])
def test_matches_the_papers_equations(mode):
    layer = make()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 15, 4, generator=g, dtype=F64)
    h0 = torch.randn(2, 2, 3, generator=g, dtype=torch.complex128)
    with torch.no_grad():
        want, h_want = oracle(layer, x, h0)
        got, h = layer(x, h0, mode=mode)
    err = max((got - want).abs().max().item(), (h - h_want).abs().max().item())
    assert err < 1e-12, err


@pytest.mark.parametrize("mode", ["sequential", "scan", "conv"])
def test_ssm_impulse_response_is_the_dss_kernel(mode):
    """DSS (Gupta et al. 2022, used by GSS): the SSM is the convolution with
    K_k = 2 Re(sum_n C_n (e^{dt lam_n} - 1) / lam_n e^{k dt lam_n}) plus D at lag 0."""
    layer = make()
    lam, dt, C, D = dss(layer)
    T = 20
    k = torch.arange(T, dtype=F64)
    K = 2 * (C * (torch.exp(dt.unsqueeze(-1) * lam) - 1) / lam
             * torch.exp(dt.view(-1, 1, 1) * lam.unsqueeze(-1) * k)
             .movedim(-1, 0)).sum(-1).real                              # (T, H)
    K[0] += D
    u = torch.zeros(1, T, 2, dtype=F64)
    u[0, 0] = 1
    with torch.no_grad():
        y, _ = layer.ssm.ssm(u, layer.init_state(1, dtype=F64), mode)
    assert (y[0] - K).abs().max() < 1e-12


def test_bad_options():
    with pytest.raises(ValueError, match="expand must be a positive int"):
        rnnzoo.create("gss", d_model=4, expand=0)
    with pytest.raises(ValueError, match="d_state must be a positive even int"):
        rnnzoo.create("gss", d_model=4, d_state=3)
