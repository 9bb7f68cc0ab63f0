"""GateLoop (Katsch 2023): contracting complex transitions and the surrogate-attention form."""

import torch

import rnnzoo


def test_transition_magnitude_below_one_for_any_input():
    torch.manual_seed(0)
    layer = rnnzoo.create("gateloop", d_model=8, num_heads=2, d_state=4).double()
    x = 100 * torch.randn(3, 40, 8, dtype=torch.float64)
    _, _, log_a, _, _ = layer.projections(x)
    a = torch.exp(log_a)
    assert (log_a.real < 0).all() and (a.abs() <= 1).all()  # |a| rounds to 1 only when saturated
    _, _, log_a1, _, _ = layer.projections(x / 100)
    assert (torch.exp(log_a1).abs() < 1).all()
    assert (a.imag.abs() > 1e-3).any()  # genuinely complex: phases rotate the state


def test_recurrence_equals_surrogate_attention():
    """o_t = Re(sum_{s<=t} (q_t . (prod_{s<r<=t} a_r) k_s) v_s), computed without a state."""
    torch.manual_seed(0)
    layer = rnnzoo.create("gateloop", d_model=6, num_heads=3, d_state=2, chunk_size=5).double()
    B, T = 2, 13
    x = torch.randn(B, T, 6, dtype=torch.float64)
    q, k, log_a, v, g = layer.projections(x)
    cum = torch.cumsum(log_a, dim=1)                               # (B, T, H, N)
    decay = torch.exp(cum.unsqueeze(2) - cum.unsqueeze(1))         # [b, t, s] = prod_{s<r<=t} a_r
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, T, T, 1, 1)
    decay = torch.where(causal, decay, torch.zeros_like(decay))
    scores = torch.einsum("bthn,btshn,bshn->btsh", q.to(decay.dtype), decay, k.to(decay.dtype))
    o = torch.einsum("btsh,bshv->bthv", scores, v.to(decay.dtype)).real.flatten(2)
    expected = layer.out_proj(o * torch.nn.functional.silu(g))
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        assert (y - expected).abs().max() < 1e-10


def test_chunk_mode_is_auto_and_keeps_large_phases_exact():
    """`chunk` (real GLA over [k cos Theta, k sin Theta]) against the loop with phases summing
    to ~1e3 rad in float32 (Theta is summed in float64), from a complex initial state, and
    the final state back in complex form."""
    torch.manual_seed(0)
    layer = rnnzoo.create("gateloop", d_model=8, num_heads=2, d_state=4, chunk_size=8)
    with torch.no_grad():
        layer.in_proj.bias[24:32] += 3.0  # the phase block (q, k, m, theta): ~3 rad per step
    x = torch.randn(2, 300, 8)
    assert layer.auto_mode(x) == "chunk"
    S0 = torch.randn(2, 2, 4, 4, dtype=torch.complex64)
    y_ref, S_ref = layer(x, S0, mode="sequential")
    y, S = layer(x, S0, mode="chunk")
    _, _, log_a, _, _ = layer.projections(x)
    assert log_a.imag.sum(1).abs().min() > 500
    assert (y - y_ref).abs().max() < 2e-6 * y_ref.abs().max()  # 5e-6 with Theta in float32
    assert (S - S_ref).abs().max() < 2e-6 * S_ref.abs().max()  # 2e-5 with Theta in float32
