"""softplus(x) = log(1 + e^x), the step-size and decay gates' map, and its inverse, which
initialises a bias so that softplus(bias) is a chosen step size dt (Mamba's dt_bias)."""

import torch


def softplus(x):
    """log(1 + e^x) as torch.logaddexp(x, 0), for the delta blocks' forget gates: the same
    values and gradient (sigmoid) as F.softplus, and traceable by torch.compile. With
    F.softplus, AOT autograd's backward graph assumes a contiguous softplus_backward where
    the gradient arrives transposed from the chunk op, and its `view` fails at run time."""
    return torch.logaddexp(x, x.new_zeros(()))


def inverse_softplus(dt: torch.Tensor) -> torch.Tensor:
    """The x with softplus(x) = dt (dt > 0): dt + log(1 - e^-dt), computed stably."""
    return dt + torch.log(-torch.expm1(-dt))
