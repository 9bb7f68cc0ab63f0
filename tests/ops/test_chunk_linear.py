"""Chunkwise gated linear attention and mLSTM: equal to their recurrent references, to
flash-linear-attention's naive references, to xLSTM's native PyTorch backend and to
mamba_ssm's `ssd_minimal_discrete`."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.ops.chunk.linear import (
    gated_linear_attention,
    gated_linear_attention_parallel,
    gated_linear_attention_recurrent,
    mlstm,
    mlstm_recurrent,
)

B, T, H, K, V = 2, 23, 3, 5, 4


def rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def qkv(dtype=torch.float64, T=T):
    return rand(B, T, H, K, dtype=dtype), rand(B, T, H, K, dtype=dtype, seed=1), \
        rand(B, T, H, V, dtype=dtype, seed=2)


def log_decay(kind, dtype=torch.float64, T=T, strength=3.0):
    if kind == "none":
        return None
    shape = (B, T, H) if kind == "scalar" else (B, T, H, K)
    return -strength * rand(*shape, dtype=dtype, seed=3).abs()


def err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
@pytest.mark.parametrize("bonus", [False, True])
@pytest.mark.parametrize("chunk,sub", [(4, 2), (8, 4), (6, 4), (64, 16)])
def test_chunk_equals_recurrent_float64(kind, bonus, chunk, sub):
    q, k, v = qkv()
    g, S0 = log_decay(kind), rand(B, H, K, V, seed=4)
    u = rand(H, K, seed=5) if bonus else None
    o_ref, s_ref = gated_linear_attention_recurrent(q, k, v, g, initial_state=S0, bonus=u)
    o, s = gated_linear_attention(q, k, v, g, initial_state=S0, bonus=u, chunk_size=chunk,
                                  subchunk_size=sub)
    assert err(o, o_ref) < 1e-12 and err(s, s_ref) < 1e-12
    if kind != "vector":
        o, s = gated_linear_attention_parallel(q, k, v, g, initial_state=S0, bonus=u)
        assert err(o, o_ref) < 1e-12 and err(s, s_ref) < 1e-12


@pytest.mark.parametrize("strength", [3.0, 30.0, 400.0])
@pytest.mark.parametrize("bonus", [False, True])
def test_vector_decay_all_three_intra_chunk_paths(strength, bonus):
    """Weak decays: one factorised block per chunk; 30 per step: sub-chunks with factorised
    diagonal blocks; 400 per step: exact log-space diagonal blocks (float64 limit e^300)."""
    q, k, v = qkv()
    g, S0 = log_decay("vector", strength=strength), rand(B, H, K, V, seed=4)
    u = rand(H, K, seed=5) if bonus else None
    o_ref, s_ref = gated_linear_attention_recurrent(q, k, v, g, initial_state=S0, bonus=u)
    o, s = gated_linear_attention(q, k, v, g, initial_state=S0, bonus=u, chunk_size=8,
                                  subchunk_size=2)
    assert err(o, o_ref) < 1e-12 and err(s, s_ref) < 1e-12


@pytest.mark.parametrize("kind,strength", [("scalar", 3.0), ("vector", 3.0), ("vector", 30.0),
                                           ("vector", 400.0)])
def test_chunk_gradients_equal_recurrent(kind, strength):
    inputs = [t.requires_grad_() for t in (*qkv(T=11), log_decay(kind, T=11, strength=strength),
                                           rand(B, H, K, V, seed=4), rand(H, K, seed=5))]

    def grads(fn, **kw):
        q, k, v, g, S0, u = inputs
        o, s = fn(q, k, v, g, initial_state=S0, bonus=u, **kw)
        return torch.autograd.grad((o * rand(*o.shape, seed=9)).sum() + s.sum(), inputs)

    for a, b in zip(grads(gated_linear_attention_recurrent),
                    grads(gated_linear_attention, chunk_size=4, subchunk_size=2)):
        assert err(a, b) < 1e-10


def test_strong_vector_decay_stays_finite_float32():
    """log-decays of -60 per step would overflow exp(-G) in a one-level chunk of 64; the
    secondary chunking keeps every exponent <= 0."""
    q, k, v = qkv(torch.float32, T=200)
    g = log_decay("vector", torch.float32, T=200, strength=60.0)
    o_ref, s_ref = gated_linear_attention_recurrent(q, k, v, g)
    o, s = gated_linear_attention(q, k, v, g, chunk_size=64, subchunk_size=16)
    assert torch.isfinite(o).all() and err(o, o_ref) < 1e-4 * o_ref.abs().max().item()


def test_no_decay_is_causal_attention_without_softmax():
    q, k, v = qkv()
    scores = torch.einsum("bihk,bjhk->bhij", q, k).tril() / math.sqrt(K)
    o_naive = torch.einsum("bhij,bjhv->bihv", scores, v)
    assert err(gated_linear_attention(q, k, v, chunk_size=4)[0], o_naive) < 1e-12


def test_bad_shapes_raise():
    q, k, v = qkv(torch.float32)
    with pytest.raises(ValueError, match="log_decay must be"):
        gated_linear_attention(q, k, v, torch.zeros(B, T, H, K + 1))
    with pytest.raises(ValueError, match="initial_state must be"):
        gated_linear_attention(q, k, v, initial_state=torch.zeros(B, H, K, K))
    with pytest.raises(ValueError, match="chunk_size must be"):
        gated_linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="scalar decay"):
        gated_linear_attention_parallel(q, k, v, torch.zeros(B, T, H, K))


# -- mLSTM -------------------------------------------------------------------------------------
def gates(dtype=torch.float64, T=T, exp_forget=False):
    log_i = 3 * rand(B, T, H, dtype=dtype, seed=6)
    f = 3 * rand(B, T, H, dtype=dtype, seed=7)
    return log_i, (f if exp_forget else F.logsigmoid(f))


@pytest.mark.parametrize("exp_forget", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_mlstm_chunk_equals_recurrent(exp_forget, chunk):
    q, k, v = qkv()
    log_i, log_f = gates(exp_forget=exp_forget)
    state = (rand(B, H, K, V, seed=4), rand(B, H, K, seed=5), rand(B, H, seed=8))
    h_ref, s_ref = mlstm_recurrent(q, k, v, log_i, log_f, initial_state=state)
    h, s = mlstm(q, k, v, log_i, log_f, initial_state=state, chunk_size=chunk)
    assert err(h, h_ref) < 1e-11
    assert all(err(a, b) < 1e-11 for a, b in zip(s, s_ref))


def test_mlstm_is_the_papers_unstabilised_recurrence():
    """xLSTM eqs. 19-27 without the stabiliser, from the zero state (m = 0):
    C_t = f C + i k v^T, n_t = f n + i k, h = C^T q / max(|n^T q|, 1), i = exp(i~)."""
    q, k, v = qkv(T=6)
    log_i, log_f = gates(T=6)
    C, n = torch.zeros(B, H, K, V, dtype=torch.float64), torch.zeros(B, H, K, dtype=torch.float64)
    h, _ = mlstm(q, k, v, log_i, log_f, chunk_size=4, eps=0.0)
    for t in range(6):
        i, f = log_i[:, t].exp()[..., None], log_f[:, t].exp()[..., None]
        C = f[..., None] * C + i[..., None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        n = f * n + i * k[:, t]
        qt = q[:, t] / math.sqrt(K)
        want = torch.einsum("bhk,bhkv->bhv", qt, C) / (qt * n).sum(-1, keepdim=True).abs().clamp(min=1)
        assert err(h[:, t], want) < 1e-12


# -- peers ---------------------------------------------------------------------------------------
def _fla(module):
    return pytest.importorskip(module, reason="flash-linear-attention (fla-core 0.6.0 + triton "
                                              "wheel, .ci/install-peers) is the oracle here")


def close32(a, b):
    return err(a.float(), b.float()) < 1e-5 * (1 + b.abs().max().item())


def test_vector_decay_equals_fla_naive_recurrent_gla():
    naive = _fla("fla.ops.gla.naive").naive_recurrent_gla
    q, k, v = qkv(torch.float32, T=70)
    g, S0 = log_decay("vector", torch.float32, T=70, strength=0.5), rand(B, H, K, V, dtype=torch.float32)
    o_peer, s_peer = naive(q, k, v, g, initial_state=S0, output_final_state=True)
    o, s = gated_linear_attention(q, k, v, g, initial_state=S0, chunk_size=16, subchunk_size=4)
    assert close32(o, o_peer) and close32(s, s_peer)


def test_scalar_decay_equals_fla_naive_simple_gla():
    mod = _fla("fla.ops.simple_gla.naive")
    q, k, v = qkv(torch.float32, T=70)
    g, S0 = log_decay("scalar", torch.float32, T=70, strength=0.5), rand(B, H, K, V, dtype=torch.float32)
    o_peer, s_peer = mod.naive_recurrent_simple_gla(q, k, v, g, initial_state=S0.clone())
    o, s = gated_linear_attention(q, k, v, g, initial_state=S0, chunk_size=16)
    assert close32(o, o_peer) and close32(s, s_peer)
    o_peer, _ = mod.naive_parallel_simple_gla(q, k, v, g)
    assert close32(gated_linear_attention_parallel(q, k, v, g)[0], o_peer)


def test_retention_equals_fla_naive_retention():
    naive = _fla("fla.ops.retention.naive").naive_retention
    q, k, v = qkv(torch.float32, T=70)
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32))
    g = gamma.log().expand(B, 70, H)
    o_peer = naive(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert close32(gated_linear_attention(q, k, v, g, chunk_size=16)[0], o_peer)
    assert close32(gated_linear_attention_parallel(q, k, v, g)[0], o_peer)


def test_no_decay_equals_fla_naive_linear_attn():
    naive = _fla("fla.ops.linear_attn.naive").naive_recurrent_linear_attn
    q, k, v = qkv(torch.float32, T=70)
    o_peer, s_peer = naive(q, k, v, output_final_state=True)
    o, s = gated_linear_attention(q, k, v, chunk_size=16)
    assert close32(o, o_peer) and close32(s, s_peer)


def test_bonus_equals_fla_naive_recurrent_rwkv6():
    naive = _fla("fla.ops.rwkv6.recurrent_naive").naive_recurrent_rwkv6
    q, k, v = qkv(torch.float32, T=70)
    w = -rand(B, 70, H, K, dtype=torch.float32, seed=3).exp()  # RWKV-6: log w = -exp(.)
    u, S0 = rand(H, K, dtype=torch.float32, seed=5), rand(B, H, K, V, dtype=torch.float32)
    o_peer, s_peer = naive(*(t.transpose(1, 2) for t in (q, k, v, w)), u,
                           initial_state=S0, output_final_state=True)
    o, s = gated_linear_attention(q, k, v, w, initial_state=S0, bonus=u, chunk_size=16,
                                  subchunk_size=4)
    assert close32(o, o_peer.transpose(1, 2)) and close32(s, s_peer)


def _xlstm():
    return pytest.importorskip("xlstm.blocks.mlstm.backends",
                               reason="xlstm 2.0.6 (.ci/install-peers) is the mLSTM oracle")


def test_mlstm_equals_xlstm_native_backends():
    xb = _xlstm()
    Tx, D = 32, K
    q, k, v = (rand(B, Tx, H, D, seed=s) for s in range(3))
    i_pre, f_pre = 3 * rand(B, Tx, H, seed=6), 3 * rand(B, Tx, H, seed=7)
    log_f = F.logsigmoid(f_pre)
    bh = lambda t: t.transpose(1, 2)  # noqa: E731  (B, T, H, ...) -> (B, H, T, ...)
    C0, n0, m0 = rand(B, H, D, D, seed=4), rand(B, H, D, seed=5), rand(B, H, seed=8)
    # chunkwise_simple: xLSTM's native chunked backend, with an initial state (it scales q by
    # 1 / sqrt(d), as we do)
    h_peer, (C_p, n_p, m_p) = xb.chunkwise_simple(
        bh(q), bh(k), bh(v), bh(i_pre), bh(f_pre), initial_C=C0, initial_n=n0, initial_m=m0,
        chunk_size=8, return_last_state=True)
    h, (C, n, m) = mlstm(q, k, v, i_pre, log_f, initial_state=(C0, n0, m0), chunk_size=4)
    assert err(h, bh(h_peer)) < 1e-10
    assert err(C, C_p) < 1e-10 and err(n, n_p) < 1e-10
    assert err(m, m_p[..., 0, 0]) < 1e-12
    # the step form, from the zero state
    state = (torch.zeros(B, H, D, D, dtype=torch.float64),
             torch.zeros(B, H, D, 1, dtype=torch.float64), torch.zeros(B, H, 1, 1, dtype=torch.float64))
    h_ref, _ = mlstm(q, k, v, i_pre, log_f, chunk_size=8)
    for t in range(Tx):
        h_t, state = xb.recurrent_step_stabilized_simple(
            *state, *(x[:, t, :, None, :].clone() for x in (q, k, v)),
            i_pre[:, t, :, None, None], f_pre[:, t, :, None, None])
        assert err(h_t[:, :, 0], h_ref[:, t]) < 1e-10
    # the parallel form has no state: it is ours from m = -inf (an empty memory)
    h_par = xb.parallel_stabilized_simple(bh(q), bh(k), bh(v), bh(i_pre)[..., None],
                                          bh(f_pre)[..., None])
    empty = (torch.zeros(B, H, D, D, dtype=torch.float64), torch.zeros(B, H, D, dtype=torch.float64),
             torch.full((B, H), float("-inf"), dtype=torch.float64))
    assert err(mlstm(q, k, v, i_pre, log_f, initial_state=empty, chunk_size=8)[0], bh(h_par)) < 1e-10


def load_ssd_minimal():
    """mamba_ssm's `ssd_minimal_discrete`, loaded from its file alone (the package's
    __init__ needs the CUDA build; the file's one Triton import is only for its own test)."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        pytest.importorskip("mamba_ssm", reason="mamba-ssm 2.3.2.post1 (.ci/install-peers, "
                                                "no CUDA build) holds the SSD oracle")
    pytest.importorskip("einops", reason="ssd_minimal.py needs einops")
    path = Path(spec.submodule_search_locations[0]) / "modules" / "ssd_minimal.py"
    source = path.read_text().replace(
        "from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined", "")
    namespace: dict = {}
    exec(compile(source, str(path), "exec"), namespace)
    return namespace["ssd_minimal_discrete"]


def test_scalar_decay_equals_mamba_ssd_minimal_discrete():
    ssd = load_ssd_minimal()
    Tm, N, P = 32, K, V
    X = rand(B, Tm, H, P, seed=1)
    A = -rand(B, Tm, H, seed=3).abs()
    Bm, Cm = rand(B, Tm, H, N, seed=4), rand(B, Tm, H, N, seed=5)
    S0 = rand(B, H, N, P, seed=6)
    Y, final = ssd(X, A, Bm, Cm, block_len=8, initial_states=S0.transpose(-1, -2)[:, None])
    o, S = gated_linear_attention(Cm, Bm, X, A, scale=1.0, initial_state=S0, chunk_size=4)
    assert err(o, Y) < 1e-11 and err(S, final.transpose(-1, -2)) < 1e-11


# -- non-finite inputs: time never runs backwards ---------------------------------------------
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
@pytest.mark.parametrize("bonus", [False, True])
def test_nonfinite_input_never_reaches_earlier_outputs(kind, bonus):
    """A NaN / inf at step t (mid-chunk) in q, k, v or the decay: outputs before t are the
    clean run's (they were NaN from the whole chunk: 0 * NaN in the masked product)."""
    from _nonfinite import check_causal
    q, k, v = qkv()
    args = [q, k, v, log_decay(kind)]
    kw = dict(initial_state=rand(B, H, K, V, seed=4), bonus=rand(H, K, seed=5) if bonus else None,
              chunk_size=8, subchunk_size=4)
    timed = [0, 1, 2] if kind == "none" else [0, 1, 2, 3]
    check_causal(gated_linear_attention, args, timed, (5, 13), kwargs=kw)
    if kind != "vector":
        kw.pop("chunk_size"), kw.pop("subchunk_size")
        check_causal(gated_linear_attention_parallel, args, timed, (5, 13), kwargs=kw)


def test_nonfinite_output_marks():
    """Where the chunk form puts NaN: a non-finite query marks its own step, a non-finite
    key marks every later step and the final state; as the recurrence does."""
    q, k, v = qkv()
    q, k = q.clone(), k.clone()
    q[0, 3, 0, 0] = float("nan")
    k[0, 9, 1, 0] = float("inf")
    o, s = gated_linear_attention(q, k, v, chunk_size=4)
    o_ref, s_ref = gated_linear_attention_recurrent(q, k, v)
    nan_steps = torch.isnan(o[0]).flatten(1).any(-1)
    assert nan_steps.tolist() == [t == 3 or t >= 9 for t in range(T)]
    assert torch.isnan(o_ref[0, 3]).any() and torch.isfinite(o_ref[0, 4:9]).all()
    assert torch.isnan(s[0]).all() and torch.isfinite(s[1]).all()


def test_mlstm_nonfinite_input_never_reaches_earlier_outputs():
    from _nonfinite import check_causal
    q, k, v = qkv()
    log_i, log_f = gates()
    check_causal(mlstm, [q, k, v, log_i, log_f], range(5), (5, 13), kwargs=dict(chunk_size=8))
