"""Second derivatives (create_graph=True) through the delta-rule family's first-order nodes,
float64: each op's C node (`twice`: its caller's chunk form replayed over the saved inputs)
and its PyTorch chunk path (backend.force("torch"): ops.chunk._common's _WY and _ChunkScan,
whose `twice` replays their own forward recorded) against a central difference of the
first-order gradients and against the double backward of the op's reference loop
(tests/ops/_second_order.py). A counter proves the C node ran where it should, and not
under force("torch")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import counter
from _second_order import second_order

from rnnzoo.layers.longhorn import longhorn_recurrence
from rnnzoo.ops import backend
from rnnzoo.ops.chunk import _common
from rnnzoo.ops.chunk.delta import (
    delta_product,
    delta_product_recurrent,
    delta_rule,
    delta_rule_recurrent,
    rwkv7,
    rwkv7_recurrent,
)
from rnnzoo.ops.chunk.kda import kda, kda_recurrent
from rnnzoo.ops.erase_delta import erase_delta, erase_delta_recurrent
from rnnzoo.ops.mesa import mesa, mesa_recurrent
from rnnzoo.ops.momentum_delta import momentum_delta, momentum_delta_recurrent
from rnnzoo.ops.native import delta_scan, longhorn_scan, mesa_scan, momentum_scan, vector_delta

B, T, H, K, V = 2, 7, 2, 3, 4   # T = 7: a partial last chunk at chunk_size 4


def _r(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _u(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _skip_unless_native(module):
    if module.load() is None or not backend.use_native(torch.zeros(1, dtype=torch.float64)):
        pytest.skip(f"{module.__name__} does not build, or RNNZOO_NATIVE=0")


def _leaves(*ts):
    return [t.detach().requires_grad_() for t in ts]


def _delta(n=1):
    q = _r(B, T, H, K, seed=1)
    k = F.normalize(_r(B, T, *([n] if n > 1 else []), H, K, seed=2), dim=-1)
    v = _r(B, T, *([n] if n > 1 else []), H, V, seed=3)
    beta = _u(*k.shape[:-1], seed=4)
    g = -0.5 * _u(B, T, H, seed=5)
    return _leaves(q, k, v, beta, g, _r(B, H, K, V, seed=6))


def _vector(case):
    q, k, v = _r(B, T, H, K, seed=1), F.normalize(_r(B, T, H, K, seed=2), dim=-1), \
        _r(B, T, H, V, seed=3)
    g = -F.softplus(_r(B, T, H, K, seed=4))
    gate = torch.sigmoid(_r(B, T, H, K, seed=5))
    S0 = _r(B, H, K, V, seed=6)
    if case == "kda":
        return _leaves(q, k, v, g, 2 * gate[..., 0], S0)
    if case == "rwkv7":
        kappa = F.normalize(_r(B, T, H, K, seed=7), dim=-1)
        return _leaves(q, -0.6 * torch.sigmoid(g), k, v, -kappa, kappa * gate, S0)
    return _leaves(q, k, v, g if case == "erase_vector" else g[..., 0], gate * k, S0)


def _ops():
    """name -> (op(*inputs), its reference loop, inputs, the C node's module and function)."""
    def dr(q, k, v, beta, g, S0):
        return delta_rule(q, k, v, beta, g, initial_state=S0, chunk_size=4)

    def dr_ref(q, k, v, beta, g, S0):
        return delta_rule_recurrent(q, k, v, beta, g, initial_state=S0)

    def dp(q, k, v, beta, g, S0):
        return delta_product(q, k, v, beta, g, initial_state=S0, chunk_size=2)

    def dp_ref(q, k, v, beta, g, S0):
        return delta_product_recurrent(q, k, v, beta, g, initial_state=S0)

    def rw(*t):
        return rwkv7(*t[:-1], scale=0.8, initial_state=t[-1], chunk_size=4)

    def rw_ref(*t):
        return rwkv7_recurrent(*t[:-1], scale=0.8, initial_state=t[-1])

    def kd(*t):
        return kda(*t[:-1], initial_state=t[-1], chunk_size=4, subchunk_size=2)

    def kd_ref(*t):
        return kda_recurrent(*t[:-1], initial_state=t[-1])

    def erase(before):
        def op(*t):
            return erase_delta(*t[:-1], initial_state=t[-1], before_decay=before, chunk_size=4,
                               subchunk_size=2)

        def ref(*t):
            return erase_delta_recurrent(*t[:-1], initial_state=t[-1], before_decay=before)
        return op, ref

    vec = (vector_delta, "vector_delta")
    return {
        "delta_rule": (dr, dr_ref, _delta(), (delta_scan, "delta")),
        "delta_product": (dp, dp_ref, _delta(2), (delta_scan, "delta")),
        "rwkv7": (rw, rw_ref, _vector("rwkv7"), vec),
        "kda": (kd, kd_ref, _vector("kda"), vec),
        "erase_vector": (*erase(False), _vector("erase_vector"), vec),
        "erase_scalar": (*erase(False), _vector("erase_scalar"), vec),
        "erase_before": (*erase(True), _vector("erase_scalar"), vec),
    }


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("name", ["delta_rule", "delta_product", "rwkv7", "kda", "erase_vector",
                                  "erase_scalar", "erase_before"])
def test_delta_ops_second_derivative(monkeypatch, name, path):
    op, ref, ins, (module, fn) = _ops()[name]
    calls = counter(monkeypatch, module, fn)
    if path == "native":
        _skip_unless_native(module)
        second_order(op, ins, ref)
        assert calls[0] > 0
    else:
        scans = [counter(monkeypatch, node, "apply") for node in (_common._WY, _common._ChunkScan)]
        with backend.force("torch"):
            second_order(op, ins, ref)
        assert calls[0] == 0 and scans[0][0] + scans[1][0] > 0


@pytest.mark.parametrize("path", ["native", "torch"])
def test_longhorn_scan_second_derivative(monkeypatch, path):
    calls = counter(monkeypatch, longhorn_scan, "longhorn_scan")
    d, m = 3, 2
    ins = _leaves(_r(B, T, d, seed=1), torch.sigmoid(_r(B, T, d, seed=2)), _r(B, T, m, seed=3),
                  _r(B, T, m, seed=4), _r(B, d, m, seed=5))

    def scan(*t):
        return longhorn_recurrence(*t, mode="scan")

    def loop(*t):
        return longhorn_recurrence(*t, mode="sequential")

    if path == "native":
        _skip_unless_native(longhorn_scan)
        second_order(scan, ins, loop)
        assert calls[0] > 0
    else:
        with backend.force("torch"):
            second_order(scan, ins, loop)
        assert calls[0] == 0


def test_mesa_second_derivative(monkeypatch):
    """Two CG steps and lamb >= 1: more steps or a smaller lamb give the truncated solve
    third derivatives large enough that the central difference itself misses by more than
    its tolerance (the reference loop's too, by as much)."""
    calls = counter(monkeypatch, mesa_scan, "mesa")
    _skip_unless_native(mesa_scan)
    ins = _leaves(_r(B, T, H, K, seed=1), F.normalize(_r(B, T, H, K, seed=2), dim=-1),
                  _r(B, T, H, V, seed=3), -0.5 * _u(B, T, H, seed=4), _u(B, T, H, seed=5),
                  1 + _u(H, K, seed=6), _r(B, H, K, K, seed=7), _r(B, H, K, V, seed=8))
    with torch.no_grad():  # H0: symmetric positive definite, as a sum of k k^T is
        ins[6].copy_(ins[6] @ ins[6].transpose(-1, -2) / K)

    def op(q, k, v, g, beta, lamb, H0, G0):
        o, (HT, GT) = mesa(q, k, v, g, beta, lamb, initial_state=(H0, G0), cg_steps=2,
                           chunk_size=4)
        return o, HT, GT

    def ref(q, k, v, g, beta, lamb, H0, G0):
        o, (HT, GT) = mesa_recurrent(q, k, v, g, beta, lamb, initial_state=(H0, G0),
                                     cg_steps=2)
        return o, HT, GT

    second_order(op, ins, ref)
    assert calls[0] > 0


@pytest.mark.parametrize("case", ["p", "p_is_k", "correction"])
def test_momentum_second_derivative(monkeypatch, case):
    calls = counter(monkeypatch, momentum_scan, "momentum")
    _skip_unless_native(momentum_scan)
    q, k, p = (F.normalize(_r(B, T, H, K, seed=s), dim=-1) for s in (1, 2, 3))
    gates = (-0.4 * _u(B, T, H, seed=4), -0.8 * _u(B, T, H, seed=5), _u(B, T, H, seed=6),
             2 * _u(B, T, H, seed=7))
    ins = _leaves(q, k, _r(B, T, H, V, seed=8), *([] if case == "p_is_k" else [p]), *gates,
                  _r(B, H, K, V, seed=9), _r(B, H, K, V, seed=10),
                  *([0.3 * _r(H, seed=11)] if case == "correction" else []))

    def run(fn):
        def f(q, k, v, *t):
            p, t = (k, t) if case == "p_is_k" else (t[0], t[1:])
            corr = t[6] if len(t) > 6 else None
            o, (S, M) = fn(q, k, v, p, *t[:4], scale=0.7, initial_state=tuple(t[4:6]),
                           **({} if fn is momentum_delta_recurrent else
                              dict(chunk_size=4, correction=corr)))
            return o, S, M
        return f

    if case == "correction":  # the reference reads at q - corr k itself
        def ref(q, k, v, p, *t):
            return run(momentum_delta_recurrent)(q - t[6][:, None] * k, k, v, p, *t[:6])
    else:
        ref = run(momentum_delta_recurrent)
    second_order(run(momentum_delta), ins, ref)
    assert calls[0] > 0


def test_a_node_given_no_plain_form_raises_the_first_order_error():
    """plain=None (the functions' default: a caller that passes no PyTorch form): under
    create_graph each C node raises the contract's "first order only" error, not a TypeError
    from calling None; its first-order backward is the kernel's own, as before."""
    for module in (delta_scan, vector_delta, longhorn_scan, mesa_scan, momentum_scan):
        _skip_unless_native(module)
    q, k, v, beta, g, S0 = _delta()
    lamb, H0 = torch.ones(H, K, dtype=torch.float64), torch.zeros(B, H, K, K, dtype=torch.float64)
    calls = [
        lambda: delta_scan.delta(delta_scan.load(), q, k, v, beta, g, S0, 0.7),
        lambda: vector_delta.vector_delta(vector_delta.load(), q, g[..., None], k, v, k, None,
                                          S0, 0.5, after=True),
        lambda: longhorn_scan.longhorn_scan(longhorn_scan.load(), q[..., 0, :],
                                            beta[..., :1].expand(B, T, K), k[..., 0, :],
                                            q[..., 1, :], S0[:, 0, :, :K]),
        lambda: mesa_scan.mesa(mesa_scan.load(), q, k, v, g, beta, lamb, H0, S0, 2, None),
        lambda: momentum_scan.momentum(momentum_scan.load(), q, k, v, k, g, g, beta, beta, S0,
                                       S0, 0.7),
    ]
    for call in calls:
        (dq,) = torch.autograd.grad(call()[0].square().sum(), q)
        assert dq.abs().sum() > 0
        with pytest.raises(RuntimeError, match="first order only"):
            torch.autograd.grad(call()[0].square().sum(), q, create_graph=True)
