"""The guard for custom autograd nodes whose backward is not written in differentiable ops.

    class MyOp(first_order.Function): ...   # forward / backward as a torch.autograd.Function
    replay(fn, args, grads, needs)          # a backward by autograd through fn's plain ops

Under create_graph=True (grad mode on inside the backward) such a backward would hand back
gradients the graph holds as constants: a silently wrong second derivative. A subclass's
backward raises there instead (docs/design.md, higher-order gradients), unless the subclass
defines `twice(ctx, *grads)`: a backward written in differentiable ops (usually `replay` of
its plain PyTorch form over the saved inputs), which then runs in its place. A node whose
backward is itself written in differentiable ops stays a plain torch.autograd.Function.
"""

from __future__ import annotations

import torch


def _plain(f):
    return f.__func__ if isinstance(f, staticmethod) else f


class Function(torch.autograd.Function):
    """A torch.autograd.Function whose backward is first order only unless it defines
    `twice` (see the module)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        backward = cls.__dict__.get("backward")
        if backward is None:
            return
        fn = _plain(backward)
        twice = cls.__dict__.get("twice")
        twice = None if twice is None else _plain(twice)

        def first_order(ctx, *grads):
            if torch.is_grad_enabled():
                if twice is not None:
                    return twice(ctx, *grads)
                raise _error(cls.__qualname__)
            return fn(ctx, *grads)

        cls.backward = staticmethod(first_order)


def _error(node: str) -> RuntimeError:
    return RuntimeError(f"rnnzoo: {node}'s backward is first order only: create_graph=True "
                        "through it is not supported; every layer's mode='sequential' is "
                        "(docs/design.md, higher-order gradients)")


def plain_given(plain, node: str) -> None:
    """A node whose `twice` replays the PyTorch form its caller passes (`plain`): called
    without one, create_graph through it raises the first-order error."""
    if plain is None:
        raise _error(f"{node} (called without its PyTorch form)")


def replay(fn, args, grads, needs):
    """The gradients of fn(*args) against `grads` by autograd through fn's own ops with
    create_graph=True, so that they can be differentiated again: a `twice` backward.

    fn: the node's forward in plain differentiable PyTorch, returning a tensor or a tuple
    of tensors (one per entry of grads); args: the forward's arguments, its tensors as
    saved (ctx.saved_tensors keeps their autograd history); grads: the backward's incoming
    gradients; needs: ctx.needs_input_grad. Returns one entry per argument: its gradient,
    or None where needs says none is wanted (or the output does not depend on it).

    The gradients are taken at aliases (views) of the tensors, so that each counts fn's own
    use of its argument only, not also a path through another argument computed from it
    (pgn passes gate(cat([u, H])) next to H itself).

    fn None (a node whose caller passed no plain form): the first-order error."""
    plain_given(fn, "this node")
    with torch.enable_grad():
        args = tuple(a.view_as(a) if isinstance(a, torch.Tensor) else a for a in args)
        out = fn(*args)
    out = out if isinstance(out, tuple) else (out,)
    pairs = [(o, g) for o, g in zip(out, grads)
             if g is not None and isinstance(o, torch.Tensor) and o.requires_grad]
    wrt = [a for a, n in zip(args, needs) if n]
    if not pairs or not wrt:
        return tuple(None for _ in args)
    got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                   create_graph=True, allow_unused=True))
    return tuple(next(got) if n else None for n in needs)
