"""DeltaNet facts: exact associative memory, and parity with negative eigenvalues."""

from __future__ import annotations

import pytest
import torch
from _parity_head import assert_sign_never_flips, assert_tracks_parity

import rnnzoo
from rnnzoo.ops.chunk.delta import delta_rule, delta_rule_recurrent

OPS = [delta_rule_recurrent, lambda *a, **kw: delta_rule(*a, chunk_size=4, **kw)]


@pytest.mark.parametrize("op", OPS, ids=["recurrent", "chunk"])
def test_beta_one_orthonormal_keys_store_and_retrieve_exactly(op):
    """Writing (k_i, v_i) with beta = 1 makes S^T k_i = v_i, whatever was stored under k_i
    before (here a random initial state and an earlier value under key 0); orthonormal keys
    do not disturb each other. Reading is a step with beta = 0."""
    torch.manual_seed(0)
    d, V = 6, 3
    keys = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0].T  # rows orthonormal
    values = torch.randn(d, V, dtype=torch.float64)
    order = [0, 3, 1, 5, 2, 4, 0]                 # key 0 is overwritten by its final write
    stored = values.clone()
    stored[0] = torch.randn(V, dtype=torch.float64)  # the first value under key 0 is replaced
    writes_v = torch.stack([stored[0]] + [values[i] for i in order[1:]])
    k = torch.cat([keys[order], keys])[None, :, None]           # (1, 13, 1, d): writes then reads
    v = torch.cat([writes_v, torch.randn(d, V, dtype=torch.float64)])[None, :, None]
    beta = torch.cat([torch.ones(len(order)), torch.zeros(d)]).double()[None, :, None]
    q = k.clone()
    S0 = torch.randn(1, 1, d, V, dtype=torch.float64)
    o, S = op(q, k, v, beta, scale=1.0, initial_state=S0)
    values[0] = writes_v[-1]
    assert (o[0, len(order):, 0] - values).abs().max() < 1e-12     # every value read back
    assert (S[0, 0].T @ keys.T - values.T).abs().max() < 1e-12


def parity_deltanet(allow_neg_eigval, mode_chunk_size=4):
    """One head, K = V = 1, inputs (bit, 1, bos): q = k = 1, v = silu(1) at BOS and 0 after,
    beta = 2 sigmoid(80 bit + 40 bos - 40): 1 at BOS (store), 2 for a 1-bit (S -> -S), ~0 for
    a 0-bit (keep). Output: the sign of S after the RMSNorm."""
    layer = rnnzoo.create("deltanet", d_model=3, num_heads=1, head_dim=1, d_conv=2,
                          chunk_size=mode_chunk_size, allow_neg_eigval=allow_neg_eigval).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        layer.qkv_proj.weight[:] = torch.tensor([[0.0, 1, 0], [0, 1, 0], [0, 0, 1]])
        layer.conv.weight[:, -1] = 1.0                    # the current token only
        layer.b_proj.weight[:] = torch.tensor([[80.0, 0, 40]])
        layer.b_proj.bias[:] = -40.0
        layer.norm_weight[:] = 1.0
        layer.o_proj.weight[0, 0] = 1.0
    return layer


def test_negative_eigenvalues_compute_parity_by_hand():
    """Grazzi et al. 2025 (arXiv:2411.12537): with beta in (0, 2) one head flips the sign of
    its state at every 1-bit, so sign(y_t) = (-1)^(bits so far). Every mode and step agree."""
    assert_tracks_parity(parity_deltanet(allow_neg_eigval=True))


def test_without_negative_eigenvalues_the_sign_never_flips():
    """The same weights with beta in (0, 1): eigenvalues 1 - beta >= 0, so the state cannot
    change sign and the head cannot track parity."""
    assert_sign_never_flips(parity_deltanet(allow_neg_eigval=False))
