"""layers._delta_block.l2norm: its own autograd Function (two passes each way) against
F.normalize and the sqrt_eps formula, values and float64 gradients, the 1e-6 floor included."""

import torch
import torch.nn.functional as F
from _twice import check_twice

from rnnzoo.layers._delta_block import l2norm


def test_l2norm_values_and_gradients_float64():
    x = torch.randn(3, 5, 2, 4, dtype=torch.float64)
    x[0, 0, 0] = 1e-8                         # below the floor: r = 1e6, held constant
    for sqrt_eps, ref in ((False, lambda t: F.normalize(t, dim=-1, eps=1e-6)),
                          (True, lambda t: t / torch.sqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6))):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, y_ref = l2norm(a, sqrt_eps), ref(b)
        torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
        w = torch.randn_like(y)
        (y * w).sum().backward()
        (y_ref * w).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
        assert torch.autograd.gradcheck(lambda t: l2norm(t, sqrt_eps), x[1:].clone().requires_grad_())


def test_l2norm_eps_matches_f_normalize_float64():
    """eps=1e-12 (rwkv7's kappa): F.normalize's floor, values and gradients on both sides."""
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    x[0, 0] = 1e-14                           # |x| = 2e-14 below the floor 1e-12
    x[0, 1] = 1e-9                            # above it, below l2norm's default 1e-6
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = l2norm(a, eps=1e-12), F.normalize(b, dim=-1, eps=1e-12)
    torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_l2norm_second_derivative():
    """create_graph runs `_L2Norm.twice` (autograd through the plain form): against a
    central difference of the first-order backward, both floors."""
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    for sqrt_eps in (False, True):
        check_twice(lambda t, s=sqrt_eps: l2norm(t, s), (x,))
