"""Mixture of Memories (arXiv:2502.13685): the routed update written as a plain loop over
tokens and memories on the layer's own tensors; one memory always chosen is Gated DeltaNet on
the same weights."""

from __future__ import annotations

import pytest
import torch

import rnnzoo


def perturbed(name, **options):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("shared", [False, True])
def test_equals_the_routed_loop(shared):
    """Each token: router softmax, top-k, weights renormalised over the chosen; each chosen
    memory m takes S <- alpha (I - beta_m k_m k_m^T) S + beta_m k_m v_m^T, the others stay;
    o = sum_chosen w_m S_m^T q / sqrt(K) (+ the shared memory, always written and read)."""
    layer = perturbed("mom", d_model=8, num_heads=2, head_dim=4, expand_v=1, num_memories=4,
                      top_k=2, shared_memory=shared, d_conv=2, chunk_size=4)
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    S0, conv = layer.init_state(2, dtype=torch.float64)
    with torch.no_grad():
        q, k, v, beta, g, _ = layer.op_inputs(x, conv)            # k (B, T, N', H, K)
        r = torch.softmax(layer.router(x), -1)
        Np = 4 + shared
        S = torch.zeros(2, Np, 2, 4, 4, dtype=torch.float64)
        outs, counts = [], torch.zeros(Np)
        for t in range(13):
            top, idx = r[:, t].topk(2, -1)
            o = torch.zeros(2, 2, 4, dtype=torch.float64)
            for b in range(2):
                chosen = {int(i): float(w) for i, w in zip(idx[b], top[b] / top[b].sum())}
                if shared:
                    chosen[4] = 1.0
                for m in range(Np):
                    if m not in chosen:
                        continue
                    counts[m] += 1
                    for h in range(2):
                        kk, vv, bb = k[b, t, m, h], v[b, t, m, h], beta[b, t, m, h]
                        Sm = g[b, t, h].exp() * (S[b, m, h] - bb * torch.outer(kk, kk @ S[b, m, h]))
                        S[b, m, h] = Sm + bb * torch.outer(kk, vv)
                        o[b, h] += chosen[m] * (S[b, m, h].T @ q[b, t, h]) / 2
            outs.append(o)
        y_ref = layer.op_output(torch.stack(outs, 1), x)
        assert (counts[:4] > 0).all() and (counts[:4] < 26).all()  # every memory used, not always
        for mode in layer.modes:
            y, (S_end, _) = layer(x, mode=mode)
            assert (y - y_ref).abs().max() < 1e-12
            assert (S_end - S.flatten(1, 2)).abs().max() < 1e-12


def test_one_memory_always_chosen_is_gated_deltanet():
    gdn = perturbed("gated_deltanet", d_model=8, num_heads=2, head_dim=4, d_conv=2, chunk_size=4)
    mom = rnnzoo.create("mom", d_model=8, num_heads=2, head_dim=4, num_memories=1, top_k=1,
                        d_conv=2, chunk_size=4).double()
    missing, unexpected = mom.load_state_dict(gdn.state_dict(), strict=False)
    assert missing == ["router.weight"] and unexpected == []
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    for mode in mom.modes:
        y, (S, _) = mom(x, mode=mode)
        y_ref, (S_ref, _) = gdn(x, mode=mode)
        assert (y - y_ref).abs().max() < 1e-12 and (S - S_ref).abs().max() < 1e-12


def test_options_checked():
    with pytest.raises(ValueError, match="top_k"):
        rnnzoo.create("mom", d_model=8, num_memories=2, top_k=3)
    with pytest.raises(TypeError, match="shared_memory must be a bool"):
        rnnzoo.create("mom", d_model=8, shared_memory=1)
