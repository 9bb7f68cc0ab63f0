"""titans_chunked(within=True), the one-chunk layout Titans-MAC's segments use: equal to the
general layout (and to the token-by-token reference) when every sequence's offset plus its
length fits in one chunk, outputs, final state and gradients, for the linear memory (its
closed-form chunk map) and the MLP one (the chunk loop)."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.ops.memory import titans_chunked, titans_init_state, titans_sequential


def _case(kind, n):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    B, T, H, K, C = 2, 3, 2, 4, 5
    q, k, v = (torch.nn.functional.normalize(r(B, T, H, K), dim=-1) for _ in range(3))
    theta, alpha, eta = (torch.sigmoid(r(B, T, H)) for _ in range(3))
    widths = [K, K] if kind == "linear" else [K, 2 * K, K]
    init = []
    for i, o in zip(widths[:-1], widths[1:]):
        init += [r(H, i, o) / i ** 0.5, 0.1 * r(H, o)]
    mem = titans_init_state(kind, B, H, K, dtype=torch.float64, hidden=2 * K)
    state = [0.2 * r(*t.shape) for t in mem[:-1]]
    w, b = 1 + 0.1 * r(H, K), 0.1 * r(H, K)
    return [q, k, v, theta, alpha, eta], C, init, state, torch.tensor(n, dtype=torch.float64), w, b


def _run(kind, n, **kw):
    tensors, C, init, state, n, w, b = _case(kind, n)
    wrt = [t.requires_grad_() for t in [*tensors, *init, *state]]
    fn = titans_sequential if kw.pop("reference", False) else titans_chunked
    z, s = fn(kind, *tensors, C, init, (*state, n), w, b, 1e-5, **kw)
    g = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (z, *s))
    return [z, *s, *torch.autograd.grad(loss, wrt)]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("norm", [False, True])
def test_within_one_chunk_equals_general_layout(kind, norm):
    n = [2.0, 5.0]            # 2 steps into the chunk (2 + 3 <= 5), and a full chunk to roll
    one = _run(kind, n, norm=norm, within=True)
    general = _run(kind, n, norm=norm)
    ref = _run(kind, n, norm=norm, reference=True)
    for a, b, c in zip(one, general, ref):
        assert (a - b).abs().max() < 1e-10
        assert (a - c).abs().max() < 1e-10
