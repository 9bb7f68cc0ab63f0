"""The guard for custom autograd nodes whose backward is not written in differentiable ops.

    class MyOp(first_order.Function): ...   # forward / backward as a torch.autograd.Function
    replay(fn, args, grads, needs)          # a backward by autograd through fn's plain ops

Under create_graph=True (grad mode on inside the backward) such a backward would hand back
gradients the graph holds as constants: a silently wrong second derivative. A subclass's
backward raises there instead (docs/design.md, higher-order gradients), unless the subclass
defines `twice(ctx, *grads)`: a backward written in differentiable ops (usually `replay` of
its plain PyTorch form over the saved inputs), which then runs in its place. A node whose
backward is itself written in differentiable ops stays a plain torch.autograd.Function
(subclassing `Transformable`).

Under torch.func's transforms (grad, vjp, jvp, vmap: docs/design.md, torch.func) a node
runs no custom autograd at all: `apply` calls its `plain(*args)` if the class defines one,
else its own `forward` with a stand-in ctx, on the transforms' wrapped tensors, so that the
transforms differentiate and batch the plain ops (ops.backend keeps the C and Triton kernels
off there, so a forward that reaches this point is plain PyTorch).
"""

from __future__ import annotations

import torch

from rnnzoo.ops.backend import transforming


def _plain(f):
    return f.__func__ if isinstance(f, staticmethod) else f


class _Ctx:
    """The ctx a forward gets under torch.func: it takes what a forward hands it and keeps
    nothing but the outputs marked non-differentiable (detached on the way out)."""

    def __init__(self, args):
        self.needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.requires_grad
                                      for a in args)
        # the inputs a grad transform tracks (not tensors captured from outside the transforms)
        self.tracked = any(n and torch._C._functorch.is_functorch_wrapped_tensor(a)
                           for a, n in zip(args, self.needs_input_grad))
        self.fixed: list[torch.Tensor] = []

    def save_for_backward(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        pass

    def mark_non_differentiable(self, *tensors):
        self.fixed.extend(tensors)


class Transformable(torch.autograd.Function):
    """A torch.autograd.Function that torch.func's transforms can go through: under them
    `apply` runs the node's plain form (`plain`, else `forward` with a stand-in ctx) instead
    of the node (see the module)."""

    @classmethod
    def apply(cls, *args, **kwargs):
        if not transforming():
            return super().apply(*args, **kwargs)
        plain = getattr(cls, "plain", None)
        if plain is not None:
            return plain(*args, **kwargs)
        return _through_forward(cls, args, kwargs)


def _through_forward(cls, args, kwargs):
    """cls.forward on the transforms' tensors, its ops recorded by them. A floating output
    that carries no gradient where an input does raises: that forward detaches or runs
    under no_grad (its backward is not its ops' derivative) and needs a `plain`."""
    ctx = _Ctx(args)
    out = cls.forward(ctx, *args, **kwargs)
    single = isinstance(out, torch.Tensor)
    outs = (out,) if single else tuple(out)
    fixed = {id(t) for t in ctx.fixed}
    if ctx.tracked and any(
            isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex())
            and id(o) not in fixed and not o.requires_grad for o in outs):
        raise RuntimeError(f"rnnzoo: {cls.__qualname__} under torch.func: its forward hides "
                           "its ops from autograd, so it needs a `plain` form (docs/design.md, "
                           "torch.func)")
    if not fixed:
        return out
    outs = tuple(o.detach() if id(o) in fixed else o for o in outs)
    return outs[0] if single else type(out)(outs)


class Function(Transformable):
    """A torch.autograd.Function whose backward is first order only unless it defines
    `twice` (see the module); torch.func's transforms run its plain form (`Transformable`)."""

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
