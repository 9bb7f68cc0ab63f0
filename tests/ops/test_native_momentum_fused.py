"""ops.native.momentum_scan's fused extras (Momentum DeltaNet's call): the read at q - D k
(`corr`, per head) and p passed as k itself (its two gradients summed in the kernel), against
the reference loop with the correction applied in torch and p a separate leaf: outputs, final
(S, M) and the gradients of q, k (p's added in), v, the gates, S0, M0 and D; float64 tight,
float32 loose; T not a multiple of the 64-step checkpoint, B = 1, one head, a narrow second
column tile, 1 and 2 threads. Also the layer and momentum_delta's C path against its torch
chunk form with the correction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _native_check import assert_close, outputs_and_grads, threads

import rnnzoo
from rnnzoo.ops import backend
from rnnzoo.ops.momentum_delta import momentum_delta, momentum_delta_recurrent
from rnnzoo.ops.native import momentum_scan


def _inputs(B, T, H, K, V, dtype):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = (F.normalize(r(B, T, H, K), dim=-1) for _ in range(2))
    gates = (-0.4 * u(B, T, H), -0.8 * u(B, T, H), u(B, T, H), 2 * u(B, T, H))
    D = 0.2 + u(H)
    return [t.requires_grad_() for t in (q, k, r(B, T, H, V), *gates, r(B, H, K, V),
                                         r(B, H, K, V), D)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,T,H,K,V", [(2, 70, 3, 5, 6), (1, 1, 1, 2, 3), (1, 37, 1, 9, 21),
                                     (1, 70, 2, 9, 40)])  # two column tiles, two checkpoints
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("with_corr", [True, False])
def test_fused_correction_and_shared_key_match_the_loop(dtype, tol, B, T, H, K, V, n_threads,
                                                        with_corr):
    ins = _inputs(B, T, H, K, V, dtype)
    q, k, v, la, lm, beta, eta, S0, M0, D = ins
    if not with_corr:
        ins = ins[:-1]
    lib = momentum_scan.load()
    assert lib is not None
    with threads(n_threads):
        got = outputs_and_grads(momentum_scan.momentum(
            lib, q, k, v, k, la, lm, beta, eta, S0, M0, 0.7, D if with_corr else None), ins)
    p = k.detach().clone().requires_grad_()
    qc = q - D[:, None] * k if with_corr else q
    o, (S, M) = momentum_delta_recurrent(qc, k, v, p, la, lm, beta, eta, scale=0.7,
                                         initial_state=(S0, M0))
    want = outputs_and_grads((o, S, M), [*ins, p])
    want[4] = want[4] + want.pop()  # k's gradient with p's
    assert_close(got, want, [f"out{i}" for i in range(len(want))], tol)


def test_momentum_delta_correction_c_path_equals_torch_chunks():
    ins = _inputs(2, 45, 2, 4, 5, torch.float64)
    q, k, v, la, lm, beta, eta, S0, M0, D = ins

    def run():
        o, (S, M) = momentum_delta(q, k, v, k, la, lm, beta, eta, initial_state=(S0, M0),
                                   correction=D, chunk_size=8)
        return outputs_and_grads((o, S, M), ins)
    got = run()
    with backend.force("torch"):
        want = run()
    assert_close(got, want, [f"out{i}" for i in range(len(want))], 1e-10)


def test_layer_native_equals_sequential_with_correction():
    torch.manual_seed(0)
    layer = rnnzoo.create("momentum_deltanet", d_model=8, num_heads=2, head_dim=3).double()
    x = torch.randn(2, 37, 8, dtype=torch.float64, requires_grad=True)
    outs = []
    for mode in ("chunk", "sequential"):
        y, _ = layer(x, mode=mode)
        outs.append(outputs_and_grads((y,), [x, layer.D_log]))
    assert_close(outs[0], outs[1], ["y", "dx", "dD"], 1e-10)
