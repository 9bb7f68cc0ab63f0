"""ops.memory: the chunkwise Miras memory equals its step loop for every retention, the l2
one (read in the dual form, without materialising each step's weights) included, for both
memory kinds, from a state that stops mid-chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.ops.memory import (
    attentional_bias,
    miras_chunked,
    miras_init_state,
    miras_sequential,
    retention,
)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("ret,bias", [("l2", "huber"), ("l2", "l2"), ("kl", "l2"), ("lq", "lp")])
def test_chunked_equals_sequential(kind, ret, bias):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    B, T, H, K, C = 2, 13, 2, 3, 4
    q, k, v = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1), r(B, T, H, K)
    eta, alpha = torch.sigmoid(r(B, T, H)), torch.sigmoid(r(B, T, H))
    delta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    widths = [K, K] if kind == "linear" else [K, 4 * K, K]
    init = [r(H, i, o) / i ** 0.5 for i, o in zip(widths[:-1], widths[1:])]
    dloss, phi = attentional_bias(bias), retention(ret)
    state = miras_init_state(kind, B, H, K, dtype=torch.float64)
    # run 3 steps first so that the chunked form starts mid-chunk
    _, state = miras_sequential(kind, q[:, :3], k[:, :3], v[:, :3], eta[:, :3], alpha[:, :3],
                                delta[:, :3], C, init, state, dloss, phi)
    rest = [t[:, 3:] for t in (q, k, v, eta, alpha, delta)]
    z_ref, s_ref = miras_sequential(kind, *rest, C, init, state, dloss, phi)
    z, s = miras_chunked(kind, *rest, C, init, state, dloss, phi)
    assert (z - z_ref).abs().max() < 1e-10
    for a, b in zip(s, s_ref):
        assert (a - b).abs().max() < 1e-10
