"""The guard for custom autograd nodes whose backward is not written in differentiable ops.

    class MyOp(first_order.Function): ...   # forward / backward as a torch.autograd.Function

Under create_graph=True (grad mode on inside the backward) such a backward would hand back
gradients the graph holds as constants: a silently wrong second derivative. A subclass's
backward raises there instead (docs/design.md, higher-order gradients). A node whose
backward is written in differentiable ops, or switches to them under grad mode, stays a
plain torch.autograd.Function.
"""

from __future__ import annotations

import torch


class Function(torch.autograd.Function):
    """A torch.autograd.Function whose backward is first order only (see the module)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        backward = cls.__dict__.get("backward")
        if backward is None:
            return
        fn = backward.__func__ if isinstance(backward, staticmethod) else backward

        def first_order(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"rnnzoo: {cls.__qualname__}'s backward is first order only: "
                    "create_graph=True through it is not supported "
                    "(docs/design.md, higher-order gradients)")
            return fn(ctx, *grads)

        cls.backward = staticmethod(first_order)
