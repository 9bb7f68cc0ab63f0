"""Mixture of Memories (arXiv:2502.13685): the routed update written as a plain loop over
tokens and memories on the layer's own tensors; one memory always chosen is Gated DeltaNet on
the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo


def perturbed(name, **options):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _memory_inputs(layer, x_t, m):
    """Memory m's raw (q, k_m, v_m) projection of x_t (C_m,) and its conv filters (C_m, d_conv),
    read straight off qkv_proj and conv (q's rows shared by every memory)."""
    H, K, V, Np = layer.num_heads, layer.head_dim, layer.value_dim, layer.num_householder
    rows = [*range(H * K), *range(H * K + m * H * K, H * K + (m + 1) * H * K),
            *range(H * K + Np * H * K + m * H * V, H * K + Np * H * K + (m + 1) * H * V)]
    return layer.qkv_proj.weight[rows] @ x_t, layer.conv.weight[rows]


@pytest.mark.parametrize("shared", [False, True])
def test_equals_the_routed_loop(shared):
    """Each token: router softmax, top-k, weights renormalised over the chosen; each chosen
    memory m convolves (q, k_m, v_m) over its own last d_conv routed tokens (the paper's
    per-memory token sequence), then S <- alpha (I - beta_m k_m k_m^T) S + beta_m k_m v_m^T,
    the others stay as they are (conv window too); o = sum_chosen w_m S_m^T q_m / sqrt(K)
    (+ the shared memory, always written and read)."""
    H, K, d_conv = 2, 4, 3
    layer = perturbed("mom", d_model=8, num_heads=H, head_dim=K, expand_v=1, num_memories=4,
                      top_k=2, shared_memory=shared, d_conv=d_conv, chunk_size=4)
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    Np = 4 + shared
    with torch.no_grad():
        r = torch.softmax(layer.router(x), -1)
        beta = torch.sigmoid(layer.b_proj(x)).view(2, 13, Np, H)
        g = -layer.A_log.exp() * F.softplus(layer.a_proj(x) + layer.dt_bias)
        S = torch.zeros(2, Np, H, K, K, dtype=torch.float64)
        window = torch.zeros(2, Np, d_conv, 2 * H * K + H * K, dtype=torch.float64)
        outs, counts = [], torch.zeros(Np)
        for t in range(13):
            top, idx = r[:, t].topk(2, -1)
            o = torch.zeros(2, H, K, dtype=torch.float64)
            for b in range(2):
                chosen = {int(i): float(w) for i, w in zip(idx[b], top[b] / top[b].sum())}
                if shared:
                    chosen[4] = 1.0
                for m, w_m in chosen.items():
                    counts[m] += 1
                    p, filt = _memory_inputs(layer, x[b, t], m)
                    window[b, m] = torch.cat([window[b, m, 1:], p[None]])
                    qkv = F.silu((window[b, m].T * filt).sum(-1)).view(3, H, K)
                    q, k, v = F.normalize(qkv[0], dim=-1), F.normalize(qkv[1], dim=-1), qkv[2]
                    for h in range(H):
                        kk, bb, Sh = k[h], beta[b, t, m, h], S[b, m, h]
                        Sm = g[b, t, h].exp() * (Sh - bb * torch.outer(kk, kk @ Sh))
                        S[b, m, h] = Sm + bb * torch.outer(kk, v[h])
                        o[b, h] += w_m * (S[b, m, h].T @ q[h]) / K ** 0.5
            outs.append(o)
        y_ref = layer.op_output(torch.stack(outs, 1), x)
        assert (counts[:4] > 0).all() and (counts[:4] < 26).all()  # every memory used, not always
        conv_ref = window[:, :, 1:].transpose(1, 2).flatten(2)
        for mode in layer.modes:
            y, (S_end, conv) = layer(x, mode=mode)
            assert (y - y_ref).abs().max() < 1e-12
            assert (S_end - S.flatten(1, 2)).abs().max() < 1e-12
            assert (conv - conv_ref).abs().max() < 1e-12
        state = layer.init_state(2, dtype=torch.float64)
        ys = []
        for t in range(13):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
        assert (torch.stack(ys, 1) - y_ref).abs().max() < 1e-12


def test_a_memory_ignores_tokens_not_routed_to_it():
    """The paper's memories see only their routed tokens: changing a token (its routing kept)
    leaves every memory it is not routed to exactly as it was, states and conv windows, in
    every mode, even where that memory's next routed token is within the conv width after it
    (a convolution over the whole sequence would carry the change there)."""
    torch.manual_seed(0)
    layer = perturbed("mom", d_model=8, num_heads=2, head_dim=4, expand_v=1, num_memories=4,
                      top_k=2, d_conv=4, chunk_size=4)
    x = torch.randn(1, 20, 8, dtype=torch.float64)
    with torch.no_grad():
        _, idx = layer._route(layer._gates(x)[2])
        chosen = torch.zeros(20, 4, dtype=torch.bool).scatter_(-1, idx[0], True)
        # a token t0 and a memory m it skips that takes the very next token
        t0, m = next((t, m) for t in range(19) for m in range(4)
                     if not chosen[t, m] and chosen[t + 1, m])
        x2 = x.clone()
        x2[0, t0] += 0.01 * torch.randn(8, dtype=torch.float64)
        assert torch.equal(layer._route(layer._gates(x2)[2])[1], idx)       # the same routing
        H, Cm = 2, layer._width
        for mode in layer.modes:
            (_, (S1, c1)), (_, (S2, c2)) = layer(x, mode=mode), layer(x2, mode=mode)
            S1, S2 = S1.unflatten(1, (4, H)), S2.unflatten(1, (4, H))
            c1, c2 = c1.unflatten(-1, (4, Cm)), c2.unflatten(-1, (4, Cm))
            assert torch.equal(S1[:, m], S2[:, m]) and torch.equal(c1[..., m, :], c2[..., m, :])
            for j in idx[0, t0]:  # the memories it is routed to do change
                assert not torch.equal(S1[:, j], S2[:, j])


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
