"""What the tests of rnnzoo.ops.native share: a call counter that proves the native path
ran, a thread-count context, one run on the native path against the same run on PyTorch's,
and the weighted-sum loss whose gradients they compare."""

from __future__ import annotations

import contextlib

import torch

from rnnzoo.ops import backend


def counter(monkeypatch, module, *names: str) -> list[int]:
    """Wraps each module.<name> so that each call adds one to the returned [count]."""
    n = [0]
    for name in names:
        real = getattr(module, name)

        def counted(*args, real=real, **kw):
            n[0] += 1
            return real(*args, **kw)
        monkeypatch.setattr(module, name, counted)
    return n


@contextlib.contextmanager
def threads(n: int):
    """torch.set_num_threads(n) inside the block, the old count restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def native_vs_torch(run, n: int):
    """(run() at n threads, then run() under backend.force("torch") at the same count): a
    kernel's results and the PyTorch path's reference."""
    with threads(n):
        got = run()
        with backend.force("torch"):
            want = run()
    return got, want


def outputs_and_grads(outputs, inputs) -> list[torch.Tensor]:
    """outputs, then the gradients of sum_i <outputs_i, R_i> (R_i fixed random weights,
    seed 1) with respect to inputs."""
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return [*outputs, *torch.autograd.grad(loss, inputs)]


def assert_close(got, want, names, tol):
    """Each pair equal in dtype and shape and within tol of the reference, relative to its
    largest entry."""
    for name, p, w in zip(names, got, want):
        assert p.dtype == w.dtype and p.shape == w.shape, name
        if w.numel():
            err = ((p - w).abs().max() / w.abs().max().clamp(min=1e-30)).item()
            assert err < tol, (name, err)
