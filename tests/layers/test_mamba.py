"""Mamba (Gu & Dao 2023): agreement with mamba_ssm's own reference, negative eigenvalues."""

import importlib.util

import pytest
import torch
from _twice import check_twice

import rnnzoo
from rnnzoo.layers.mamba import _DeltaProj, selective_scan


def _ref():
    pytest.importorskip("einops", reason="mamba_ssm's selective_scan_ref needs einops "
                                         "(.ci/install-peers)")
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed: see .ci/install-peers")
    from peers.mamba_ssm import load_selective_scan_ref
    return load_selective_scan_ref()


def test_scan_equals_mamba_ssm_selective_scan_ref():
    """The whole block, with its selective scan replaced by mamba_ssm's, gives the same y
    (float32: the reference casts its inputs to float32)."""
    ref = _ref()
    dtype = torch.float32
    torch.manual_seed(0)
    layer = rnnzoo.create("mamba", d_model=8, d_state=5, expand=2, chunk_size=16).to(dtype)
    x = torch.randn(2, 50, 8, dtype=dtype)
    conv_state, _ = layer.init_state(2, dtype=dtype)
    u, delta, A, B, C, z, _ = layer.ssm_inputs(x, conv_state)
    y_ref, h_ref = ref(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                       C.transpose(1, 2), layer.D, z.transpose(1, 2), return_last_state=True)
    y_ref = layer.out_proj(y_ref.transpose(1, 2).to(dtype))
    tol = 1e-5
    for mode in layer.modes:
        y, (_, h) = layer(x, mode=mode)
        assert (y - y_ref).abs().max() < tol * (1 + y_ref.abs().max())
        assert (h - h_ref).abs().max() < tol * (1 + h_ref.abs().max())


def test_selective_scan_gradients_equal_reference():
    """float32, as the reference computes."""
    ref = _ref()
    g = torch.Generator().manual_seed(0)
    Bt, T, Din, N = 2, 37, 6, 4
    u, dt = (torch.randn(Bt, T, Din, generator=g, dtype=torch.float32) for _ in range(2))
    delta = torch.nn.functional.softplus(dt)
    A = -torch.rand(Din, N, generator=g) * 2
    B, C = (torch.randn(Bt, T, N, generator=g) for _ in range(2))
    D = torch.randn(Din, generator=g)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D)]
    w = torch.randn(Bt, T, Din, generator=g)
    y, _ = selective_scan(u, delta, A, B, C, D, chunk_size=8)
    ours = torch.autograd.grad((y * w).sum(), leaves)
    y_ref = ref(*(t.transpose(1, 2) if t.dim() == 3 else t for t in (u, delta, A, B, C, D)))
    theirs = torch.autograd.grad((y_ref.transpose(1, 2) * w).sum(), leaves)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-5 * (1 + b.abs().max())


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_selective_scan_backward_gradcheck(allow_neg_eigval, chunk_size):
    """The hand-written backward of the scan mode, float64, with h0 and a final-state loss,
    over chunk boundaries (T = 11 is not a multiple of 4) and the two solvers of
    `chunked_scan` (loop for L <= 16, two-level above)."""
    g = torch.Generator().manual_seed(1)
    Bt, T, Din, N = 2, 11 if chunk_size < 16 else 37, 3, 2
    u = torch.randn(Bt, T, Din, generator=g, dtype=torch.float64)
    delta = torch.nn.functional.softplus(torch.randn(Bt, T, Din, generator=g, dtype=torch.float64))
    A = -torch.rand(Din, N, generator=g, dtype=torch.float64) * 2
    B, C = (torch.randn(Bt, T, N, generator=g, dtype=torch.float64) for _ in range(2))
    D = torch.randn(Din, generator=g, dtype=torch.float64)
    h0 = torch.randn(Bt, Din, N, generator=g, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, h0)]

    def f(u, delta, A, B, C, h0):
        y, h = selective_scan(u, delta, A, B, C, D, h0, allow_neg_eigval=allow_neg_eigval,
                              chunk_size=chunk_size)
        return y, h

    assert torch.autograd.gradcheck(f, leaves)


def _parity_mamba(allow_neg_eigval):
    """Hand-set weights: input feature 0 is the sequence (+-1), feature 1 is a constant 1.

    delta is ~0 for +1 and ~30 for -1, B = 0 (nothing is written), so h_t = prod_s a_s h_0.
    With a = 2 exp(delta A) - 1 that is the running parity of the sequence times h_0.
    """
    layer = rnnzoo.create("mamba", d_model=2, d_state=1, d_conv=1, expand=1, dt_rank=1,
                          allow_neg_eigval=allow_neg_eigval).double()
    silu = torch.nn.functional.silu
    lo, hi = silu(torch.tensor(-1.0)).item(), silu(torch.tensor(1.0)).item()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        layer.in_proj.weight[:] = torch.tensor([[1.0, 0], [0, 0], [0, 0], [0, 10.0]])  # x, x, z, z
        layer.conv.weight[:] = 1.0
        layer.x_proj.weight[0, 0] = 1.0                                   # dt = silu(x_0)
        slope = -50 / (hi - lo)                                           # dt_raw(+1)=-20, (-1)=+30
        layer.dt_proj.weight[0, 0] = slope
        layer.dt_proj.bias[0] = -20 - slope * hi
        layer.out_proj.weight[0, 0] = 1.0
    return layer


def test_negative_eigenvalues_let_one_channel_compute_parity():
    """Grazzi et al. 2025: with a in (-1, 1) a diagonal channel can flip sign on each -1;
    with a in (0, 1) (standard Mamba) the same weights can never change the state's sign."""
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (16, 64), generator=g).double() * 2 - 1
    x = torch.stack([signs, torch.ones_like(signs)], -1)
    parity = torch.cumprod(signs, dim=1)
    for allow in (True, False):
        layer = _parity_mamba(allow)
        conv0, _ = layer.init_state(16, dtype=torch.float64)
        h0 = torch.ones(16, 2, 1, dtype=torch.float64)  # both inner channels see delta
        for mode in layer.modes:
            _, (_, h) = layer(x, (conv0, h0), mode=mode)
            if allow:
                assert torch.equal(torch.sign(h[:, 0, 0]), parity[:, -1])
                assert (h[:, 0, 0] - parity[:, -1]).abs().max() < 1e-6
            else:
                assert (h >= 0).all()  # a in (0, 1): the sign can never flip
        # the state itself tracks the running parity at every step (step mode)
        state = (conv0, h0)
        for t in range(8):
            _, state = layer.step(x[:, t], state)
            if allow:
                assert torch.equal(torch.sign(state[1][:, 0, 0]), parity[:, t])


def test_transition_range():
    delta = torch.rand(1000, 1, dtype=torch.float64) * 50
    A = -torch.rand(1, 4, dtype=torch.float64) * 3
    from rnnzoo.layers.mamba import transition
    a = transition(delta, A)
    assert ((a >= 0) & (a <= 1)).all()
    a = transition(delta, A, allow_neg_eigval=True)
    assert ((a >= -1) & (a <= 1)).all() and (a < -0.99).any()


def test_conv_state_is_the_last_inputs_of_each_sequence():
    torch.manual_seed(0)
    layer = rnnzoo.create("mamba", d_model=4, d_state=2, d_conv=4, expand=1).double()
    x = torch.randn(3, 9, 4, dtype=torch.float64)
    lengths = torch.tensor([9, 2, 5])
    _, (conv, _) = layer(x, lengths=lengths)
    x_in = layer.in_proj(x)[..., :4]
    for b, n in enumerate(lengths.tolist()):
        want = torch.cat([torch.zeros(3, 4, dtype=torch.float64), x_in[b, :n]])[-3:]
        assert (conv[b] - want).abs().max() < 1e-12


def test_bad_options():
    with pytest.raises(ValueError, match="d_state must be a positive int, got 0"):
        rnnzoo.create("mamba", d_model=4, d_state=0)
    with pytest.raises(ValueError, match="d_conv"):
        rnnzoo.create("mamba", d_model=4, d_conv=-1)
    with pytest.raises(TypeError, match="allow_neg_eigval"):
        rnnzoo.create("mamba", d_model=4, allow_neg_eigval="yes")



def test_delta_proj_and_the_scan_second_derivative():
    """`_DeltaProj.twice` (the plain softplus(dt W^T + b)); the layer's scan mode (its scan
    node's `twice`: the loop, layers.mamba._loop) differentiates twice: its second derivative
    in x along a random direction against a central difference."""
    g = torch.Generator().manual_seed(0)
    dt, W, b = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
                for s in ((2, 3, 2), (5, 2), (5,)))
    check_twice(_DeltaProj.apply, (dt, W, b))
    layer = rnnzoo.create("mamba", d_model=4, d_state=2, d_conv=3, expand=1, dt_rank=1,
                          chunk_size=4).double()
    x = torch.randn(1, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    check_twice(lambda x: layer(x, mode="scan")[0], (x,))
