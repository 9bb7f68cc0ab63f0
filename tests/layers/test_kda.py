"""KDA (Kimi Linear, arXiv:2510.26692): fla's naive KDA on the layer's own tensors; exact
associative recall with orthonormal keys and forgetting one key channel alone (the
per-channel decay); with allow_neg_eigval, a hand-built parity head."""

from __future__ import annotations

import pytest
import torch
from _parity_head import assert_sign_never_flips, assert_tracks_parity
from _twice import check_twice

import rnnzoo
from rnnzoo.layers.kda import _LogDecay
from rnnzoo.ops.chunk.kda import kda, kda_recurrent

OPS = [kda_recurrent, lambda *a, **kw: kda(*a, chunk_size=4, subchunk_size=2, **kw)]


def test_layer_equals_fla_naive_kda():
    """The block's q, k, v, g, beta through fla-core 0.6.0's naive recurrent and chunk KDA,
    then the block's output: equal to every mode of the layer."""
    naive = pytest.importorskip("fla.ops.kda.naive",
                                reason="fla-core 0.6.0 is the oracle (see .ci/install-peers)")
    torch.manual_seed(0)
    layer = rnnzoo.create("kda", d_model=16, num_heads=2, head_dim=8, chunk_size=8,
                          subchunk_size=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 24, 16)
    S, conv = layer.init_state(2)
    q, k, v, g, beta, _ = layer.op_inputs(x, conv)
    with torch.no_grad():
        o_rec, _ = naive.naive_recurrent_kda(q, k, v, g, beta, initial_state=S)
        o_chk, _ = naive.naive_chunk_kda(q, k, v, g, beta, initial_state=S, chunk_size=8)
        y_fla = [layer.op_output(o, x) for o in (o_rec, o_chk)]
        for mode in layer.modes:
            y, _ = layer(x, mode=mode)
            for ref in y_fla:
                assert (y - ref).abs().max() < 1e-5 * ref.abs().max()


@pytest.mark.parametrize("op", OPS, ids=["recurrent", "chunk"])
def test_orthonormal_keys_recall_exactly_and_one_channel_forgets_alone(op):
    """Writes (k_i, v_i) with beta = 1 and no decay store S^T k_i = v_i exactly, whatever was
    under k_i (a random initial state, an earlier write); orthonormal keys leave each other
    alone. Then one step decays key channel 0 only (g = -1000 on it): with the keys the
    standard basis, the value under e_0 is erased and every other value is kept exactly, a
    forgetting a scalar gate (Gated DeltaNet) cannot do."""
    torch.manual_seed(0)
    d, V = 6, 3
    for keys in (torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0].T,
                 torch.eye(d, dtype=torch.float64)):
        values = torch.randn(d, V, dtype=torch.float64)
        order = [0, 3, 1, 5, 2, 4, 0]
        writes_v = torch.stack([torch.randn(V, dtype=torch.float64)] + [values[i] for i in order[1:]])
        values[0] = writes_v[-1]
        k = torch.cat([keys[order], keys])[None, :, None]            # writes, then reads
        v = torch.cat([writes_v, torch.randn(d, V, dtype=torch.float64)])[None, :, None]
        beta = torch.cat([torch.ones(len(order)), torch.zeros(d)]).double()[None, :, None]
        g = torch.zeros(1, len(order) + d, 1, d, dtype=torch.float64)
        S0 = torch.randn(1, 1, d, V, dtype=torch.float64)
        o, S = op(k.clone(), k, v, g, beta, scale=1.0, initial_state=S0)
        assert (o[0, len(order):, 0] - values).abs().max() < 1e-12
        assert (S[0, 0].T @ keys.T - values.T).abs().max() < 1e-12
    # keys = e_i: decay channel 0 alone, then read every key
    g = torch.zeros(1, d, 1, d, dtype=torch.float64)
    g[0, 0, 0, 0] = -1e3                     # exp(-1000) = 0 in float64
    zeros = torch.zeros(1, d, 1, dtype=torch.float64)
    o2, _ = op(keys[None, :, None], keys[None, :, None], torch.zeros(1, d, 1, V, dtype=torch.float64),
               g, zeros, scale=1.0, initial_state=S)
    assert (o2[0, 0, 0]).abs().max() == 0
    assert (o2[0, 1:, 0] - values[1:]).abs().max() < 1e-12


def parity_kda(allow_neg_eigval):
    """One head, K = V = 1, inputs (bit, 1, bos): q = k = 1, v = silu(1) at BOS and 0 after;
    beta = 2 sigmoid(80 bit - 40 + 40 bos) (the constant input stands for b_proj's missing
    bias): 1 at BOS (store), 2 for a 1-bit (S -> -S), ~0 for a 0-bit (keep). No decay
    (exp(A_log) = 0), the output gate open (sigmoid(40)); the output is the sign of S."""
    layer = rnnzoo.create("kda", d_model=3, num_heads=1, head_dim=1, d_conv=2, chunk_size=4,
                          subchunk_size=2, allow_neg_eigval=allow_neg_eigval).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        layer.qkv_proj.weight[:] = torch.tensor([[0.0, 1, 0], [0, 1, 0], [0, 0, 1]])
        layer.conv.weight[:, -1] = 1.0
        layer.A_log.fill_(-1e4)
        layer.b_proj.weight[:] = torch.tensor([[80.0, -40, 40]])
        layer.g_proj[1].bias.fill_(40.0)
        layer.norm.weight.fill_(1.0)
        layer.o_proj.weight[0, 0] = 1.0
    return layer


def test_negative_eigenvalues_compute_parity_by_hand():
    """With beta in (0, 2) the head flips its state's sign at every 1-bit (Grazzi et al. 2025,
    arXiv:2411.12537): sign(y_t) = (-1)^(bits so far), in every mode and in step."""
    assert_tracks_parity(parity_kda(allow_neg_eigval=True))


def test_without_negative_eigenvalues_the_sign_never_flips():
    assert_sign_never_flips(parity_kda(allow_neg_eigval=False))


def test_options_checked():
    with pytest.raises(ValueError, match="subchunk_size must divide chunk_size=8"):
        rnnzoo.create("kda", d_model=8, chunk_size=8, subchunk_size=3)
    with pytest.raises(TypeError, match="allow_neg_eigval must be a bool"):
        rnnzoo.create("kda", d_model=8, allow_neg_eigval=1)



def test_log_decay_second_derivative():
    """create_graph runs `_LogDecay.twice` (the plain -exp(A_log) softplus(f))."""
    g = torch.Generator().manual_seed(0)
    f, A_log = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
                for s in ((2, 3, 2, 4), (2,)))
    check_twice(_LogDecay.apply, (f, A_log))
