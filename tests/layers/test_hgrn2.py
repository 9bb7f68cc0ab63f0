"""HGRN2 (Qin et al. 2024): the outer-product recurrence written out, and a long sequence."""

import torch
import torch.nn.functional as F
from _twice import check_twice

import rnnzoo
from rnnzoo.layers.hgrn2 import _Gates


def test_equals_hgrn_with_state_expansion_and_lower_bound():
    """f = beta + (1 - beta) sigmoid(x W_f) >= beta; S_t = diag(f_t) S_{t-1} + (1 - f_t) i_t^T;
    o = S^T swish(x W_q); y = RMSNorm_h(o) W_O."""
    torch.manual_seed(0)
    H, d, E, beta = 2, 8, 3, 0.4
    layer = rnnzoo.create("hgrn2", d_model=d, num_heads=H, d_state=E, lower_bound=beta,
                          chunk_size=8, subchunk_size=4).double()
    x = torch.randn(2, 21, d, dtype=torch.float64)
    q, f = layer.qf(x).view(2, 21, 2, H, E).unbind(2)
    f = beta + (1 - beta) * torch.sigmoid(f)
    assert (f >= beta).all()
    i = layer.i_proj(x).view(2, 21, H, d // H)
    S, outs = torch.zeros(2, H, E, d // H, dtype=torch.float64), []
    for t in range(21):
        S = f[:, t, :, :, None] * S + (1 - f[:, t, :, :, None]) * i[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", F.silu(q[:, t]), S))
    o = torch.stack(outs, 1)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm.weight
    want = layer.out_proj(o.reshape(2, 21, d))
    for mode in layer.modes:
        y, s = layer(x, mode=mode)
        assert (y - want).abs().max() < 1e-12 and (s - S).abs().max() < 1e-12


def test_long_sequence_float32_is_finite():
    layer = rnnzoo.create("hgrn2", d_model=8, num_heads=2, d_state=8)
    with torch.no_grad():
        y, s = layer(torch.randn(1, 65536, 8), mode="chunk")
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


def test_gates_function_gradcheck():
    """q = silu(a), log f = logsigmoid(b), k = sigmoid(-b) with the hand-written gradient,
    against autograd's numerical one, each output's gradient alone and all three together."""
    qf = (3 * torch.randn(2, 3, 2, 2, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(_Gates.apply, (qf,))
    for i in range(3):
        assert torch.autograd.gradcheck(lambda t, i=i: _Gates.apply(t)[i], (qf,))



def test_gates_second_derivative():
    """create_graph runs `_Gates.twice` (its backward writes into buffers)."""
    qf = torch.randn(2, 3, 2, 2, 4, dtype=torch.float64, requires_grad=True)
    check_twice(_Gates.apply, (qf,))
