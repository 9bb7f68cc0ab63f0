"""expRNN (Lezcano-Casado & Martinez-Rubio 2019) and the Lipschitz RNN (Erichson et al.
2021): the structure of their recurrent matrices, and one step by hand."""

import pytest
import torch

from rnnzoo.cells.orthogonal import ExpRNNCell, LipschitzRNNCell


def test_exprnn_recurrent_matrix_is_orthogonal_and_preserves_norm():
    torch.manual_seed(0)
    cell = ExpRNNCell(3, 6).double()
    with torch.no_grad():
        cell.weight_hh_log.add_(torch.randn(6, 6, dtype=torch.float64))  # any parameter
    B = cell.weight_hh
    assert (B.T @ B - torch.eye(6, dtype=torch.float64)).abs().max() < 1e-12
    assert abs(torch.linalg.det(B).item() - 1) < 1e-12  # exp of skew: in SO(n)
    with torch.no_grad():  # modReLU with b = 0 is the identity; zero input: h_t = B^t h_0
        cell.bias_mod.zero_()
        cell.bias.zero_()
    h0 = torch.randn(2, 6, dtype=torch.float64)
    y, _ = cell(torch.zeros(2, 200, 3, dtype=torch.float64), (h0,))
    assert (y.norm(dim=-1) - h0.norm(dim=-1)[:, None]).abs().max() < 1e-10


def test_exprnn_step_by_hand():
    torch.manual_seed(0)
    cell = ExpRNNCell(2, 4).double()
    x, h = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    P = cell.weight_hh_log.triu(1)
    z = x @ cell.weight_ih.T + cell.bias + h @ torch.linalg.matrix_exp(P - P.T).T
    expected = torch.sign(z) * torch.relu(z.abs() + cell.bias_mod)
    assert (cell.step(x, (h,))[0] - expected).abs().max() < 1e-14


def test_lipschitz_matrix_spectrum_and_step():
    """With beta = 1 the matrices are skew-symmetric minus gamma I: every eigenvalue has
    real part exactly -gamma (the paper's section 3 bound is then tight)."""
    torch.manual_seed(0)
    cell = LipschitzRNNCell(2, 5, beta=1.0, gamma_a=0.2, gamma_w=0.05).double()
    R = cell.recurrent_matrix()
    A, W = R[:5], R[5:]
    assert (torch.linalg.eigvals(A).real + 0.2).abs().max() < 1e-12
    assert (torch.linalg.eigvals(W).real + 0.05).abs().max() < 1e-12
    cell = LipschitzRNNCell(2, 5, beta=0.75, eps=0.1).double()
    x, h = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    M_A, M_W, eye = cell.weight_a, cell.weight_w, torch.eye(5, dtype=torch.float64)
    A = 0.25 * (M_A + M_A.T) + 0.75 * (M_A - M_A.T) - 0.001 * eye
    W = 0.25 * (M_W + M_W.T) + 0.75 * (M_W - M_W.T) - 0.001 * eye
    expected = h + 0.1 * (h @ A.T + torch.tanh(h @ W.T + x @ cell.weight_ih.T + cell.bias))
    assert (cell.step(x, (h,))[0] - expected).abs().max() < 1e-14


def test_lipschitz_bad_options():
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\], got 2"):
        LipschitzRNNCell(2, 3, beta=2)
    with pytest.raises(ValueError, match="eps must be"):
        LipschitzRNNCell(2, 3, eps=0)



@pytest.mark.parametrize("cls", [ExpRNNCell, LipschitzRNNCell])
def test_fused_second_derivative_equals_loop(cls):
    """fused_loop runs the step on W detached (its gradient deferred to one product); under
    create_graph its node replays the cell's loop with W itself: the second derivative in x,
    the initial state and every parameter equals the reference loop's."""
    cell = cls(3, 4).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    state = tuple((0.3 * torch.randn(2, n, dtype=torch.float64, generator=g)).requires_grad_()
                  for n in cell.state_sizes)
    wrt = [x, *state, *cell.parameters()]

    def second(fused):
        y, last = cell(x, state, fused=fused)
        loss = y.square().sum() + sum(s.square().sum() for s in last)
        gs = torch.autograd.grad(loss, wrt, create_graph=True)
        return torch.autograd.grad(sum(t.square().sum() for t in gs), wrt)

    for a, b in zip(second(True), second(False)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
