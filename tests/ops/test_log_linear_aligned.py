"""ops.log_linear's CPU chunk path (`_aligned`: the position read on the host, chunks on the
grid of multiples of 2^c, only the Fenwick blocks that hold tokens read) against the dense
chunk form that runs everywhere else (`_chunked`, under backend.force("torch")): outputs,
final buckets and count, and the gradients of q, k, v, the decays, the level weights and
the initial buckets, from positions on and off the grid, across the top level's wrap, with
empty and partly empty initial buckets; rows at different counts keep the dense form."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, threads

from rnnzoo.ops import backend
from rnnzoo.ops import log_linear as ll


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, ll, "_aligned")


def _run(B, T, H, L, C, n0, buckets, grad_buckets=True, spread=False):
    gen = torch.Generator().manual_seed(n0 + T)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    K, V = 3, 4
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    lam = torch.rand(B, T, H, L, generator=gen, dtype=torch.float64) + 0.5
    S = r(B, H, L - 1, K, V) if buckets else torch.zeros(B, H, L - 1, K, V, dtype=torch.float64)
    if buckets:
        S[:, :, 1] = 0  # an empty slot among full ones
    count = torch.full((B,), float(n0), dtype=torch.float64)
    if spread:
        count[0] += 1
    ins = [q, k, v, g, lam] + ([S] if grad_buckets else [])
    for t in ins:
        t.requires_grad_()
    wy, wS = r(B, T, H, V), r(B, H, L - 1, K, V)

    def go():
        y, (S1, n1) = ll.log_linear_attention(q, k, v, g, lam, initial_state=(S, count),
                                              chunk_size=C)
        grads = torch.autograd.grad((y * wy).sum() + (S1 * wS).sum(), ins)
        return [y, S1, n1, *grads]

    got = go()
    with backend.force("torch"):
        want = go()
    return got, want, ["y", "S", "count", "q", "k", "v", "g", "lam", "S0"][:len(got)]


@pytest.mark.parametrize("T,L,C,n0", [(37, 4, 4, 0), (37, 4, 4, 5), (64, 6, 8, 0),
                                      (100, 6, 8, 13), (130, 5, 4, 29), (50, 8, 8, 250),
                                      (33, 3, 4, 3), (9, 16, 64, 1000)])
@pytest.mark.parametrize("buckets", [True, False])
def test_aligned_path_equals_dense_chunks(calls, T, L, C, n0, buckets):
    got, want, names = _run(2, T, 2, L, C, n0, buckets)
    assert calls[0] == 1
    assert_close(got, want, names, 1e-10)


def test_aligned_path_reads_only_live_buckets_without_their_gradient(calls):
    """Buckets that need no gradient: the empty slots are skipped, the values unchanged."""
    got, want, names = _run(2, 45, 2, 6, 8, 7, True, grad_buckets=False)
    assert calls[0] == 1
    assert_close(got, want, names, 1e-10)


def test_rows_at_different_counts_keep_the_dense_form(calls):
    got, want, names = _run(2, 20, 1, 5, 4, 6, True, spread=True)
    assert calls[0] == 0
    assert_close(got, want, names, 1e-12)


@pytest.mark.parametrize("value", [0.0, 0.3, float("nan")])
def test_expanded_constant_buckets_read_as_their_value(calls, value):
    """Buckets given as one value expanded (the layer's fresh state: no zeros written): read
    from that one value, empty when it is 0, else every slot live (NaN included), the same
    outputs and final buckets as the materialized tensor on the same path."""
    B, T, H, L, K, V = 2, 23, 2, 6, 3, 4
    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    lam = torch.rand(B, T, H, L, generator=gen, dtype=torch.float64) + 0.5
    count = torch.full((B,), 5.0, dtype=torch.float64)
    S = torch.tensor(value, dtype=torch.float64).expand(B, H, L - 1, K, V)
    outs = [ll.log_linear_attention(q, k, v, g, lam, initial_state=(s, count), chunk_size=4)
            for s in (S, S.contiguous())]
    assert calls[0] == 2
    (y, (S1, n1)), (y2, (S2, n2)) = outs
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(S1, S2, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.equal(n1, n2)
    assert bool(y.isnan().any()) == (value != value)


def _wide_case(B, T, H, L, n0, buckets, dtype, seed):
    """The C block's inputs with v a column view of a wider tensor (the layer's conv output):
    q, k (B, T, 1, 3), wide (B, T, H 4 + 5), u, g (B, T, H), lam (B, T, H, L), the buckets S
    (random or zero) at count n0, the loss weights wy, wS; and the generator's randn."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    K, V = 3, 4
    q, k, wide = r(B, T, 1, K), r(B, T, 1, K), r(B, T, H * V + 5)
    u = torch.rand(B, T, H, generator=gen, dtype=dtype) + 0.1
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype)
    lam = torch.rand(B, T, H, L, generator=gen, dtype=dtype) + 0.5
    S = r(B, H, L - 1, K, V) if buckets else torch.zeros(B, H, L - 1, K, V, dtype=dtype)
    count = torch.full((B,), float(n0), dtype=dtype)
    wy, wS = r(B, T, H, V), r(B, H, L - 1, K, V)
    return q, k, wide, u, g, lam, S, count, wy, wS, r


WIDE_CASES = [(2, 37, 2, 6, 8, 0, False), (2, 45, 3, 6, 8, 13, True), (1, 20, 1, 5, 4, 3, False),
              (2, 64, 2, 8, 16, 0, False)]


@pytest.mark.parametrize("B,T,H,L,C,n0,buckets", WIDE_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_v_scale_in_the_c_block(calls, B, T, H, L, C, n0, buckets, dtype, tol, nthreads):
    """v_scale u (the values u_t v_t) with v a column view of a wider tensor (the layer's
    conv output), read in place by the C block: outputs, final buckets and the gradients of
    q, k, the wide tensor, u, the decays and the level weights against the torch path given
    v * u, float64 and float32, T off the chunk grid, from positions off it, B = 1 with one
    head, 1 and 2 threads."""
    q, k, wide, u, g, lam, S, count, wy, wS, _ = _wide_case(B, T, H, L, n0, buckets, dtype, T + n0)
    V = 4
    ins = [q, k, wide, u, g, lam]
    for t in ins:
        t.requires_grad_()

    def go(inside):
        v = wide[..., 2:2 + H * V].unflatten(-1, (H, V))
        kw = dict(v_scale=u) if inside else {}
        y, (S1, n1) = ll.log_linear_attention(q, k, v if inside else v * u[..., None], g, lam,
                                              initial_state=(S, count), chunk_size=C, **kw)
        grads = torch.autograd.grad((y * wy).sum() + (S1 * wS).sum(), ins)
        return [y, S1, n1, *grads]

    with threads(nthreads):
        got = go(True)
    with backend.force("torch"):
        want, torch_u = go(False), go(True)
    assert calls[0] == 1
    names = ["y", "S", "count", "q", "k", "wide", "u", "g", "lam"]
    assert_close(got, want, names, tol)
    assert_close(torch_u, want, names, tol)  # v_scale on the torch path (the dense form)


def test_v_scale_on_the_dense_form(calls):
    """Rows at different counts (the dense chunk form, not the C block): v_scale equals v * u."""
    gen = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    B, T, H, L, K, V = 2, 19, 2, 5, 3, 4
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    u = torch.rand(B, T, H, generator=gen, dtype=torch.float64) + 0.1
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    lam = torch.rand(B, T, H, L, generator=gen, dtype=torch.float64) + 0.5
    state = (r(B, H, L - 1, K, V), torch.tensor([3.0, 6.0], dtype=torch.float64))
    ins = [v, u]
    for t in ins:
        t.requires_grad_()
    runs = []
    for inside in (True, False):
        kw = dict(v_scale=u) if inside else {}
        y, (S1, _) = ll.log_linear_attention(q, k, v if inside else v * u[..., None], g, lam,
                                             initial_state=state, chunk_size=4, **kw)
        runs.append([y, S1, *torch.autograd.grad((y * y).sum() + S1.sum(), ins)])
    assert calls[0] == 0
    assert_close(runs[0], runs[1], ["y", "S", "v", "u"], 1e-12)


@pytest.mark.parametrize("B,T,H,L,C,n0,buckets", WIDE_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("scaled", [False, True])
def test_skip_in_the_c_block(calls, B, T, H, L, C, n0, buckets, dtype, tol, nthreads, scaled):
    """skip D (H,): the output also holds D_h v_t (the unscaled v, a column view of a wider
    tensor), added by the C block: outputs, final buckets and the gradients of q, k, the wide
    tensor, u (with v_scale), the decays, the level weights and D against the torch path plus
    D v added outside, float64 and float32, T off the chunk grid, from positions off it, B = 1
    with one head, 1 and 2 threads; and the torch path given skip itself."""
    q, k, wide, u, g, lam, S, count, wy, wS, r = _wide_case(B, T, H, L, n0, buckets, dtype,
                                                           T + n0 + 1)
    D, V = r(H), 4
    ins = [q, k, wide, u, g, lam, D]
    for t in ins:
        t.requires_grad_()

    def go(inside):
        v = wide[..., 2:2 + H * V].unflatten(-1, (H, V))
        kw = dict(v_scale=u) if scaled else {}
        if inside:
            kw["skip"] = D
        y, (S1, n1) = ll.log_linear_attention(q, k, v, g, lam, initial_state=(S, count),
                                              chunk_size=C, **kw)
        if not inside:
            y = y + D[:, None] * v
        grads = torch.autograd.grad((y * wy).sum() + (S1 * wS).sum(), ins, allow_unused=True)
        return [y, S1, n1, *(gr if gr is not None else torch.zeros_like(t)
                             for gr, t in zip(grads, ins))]

    with threads(nthreads):
        got = go(True)
    with backend.force("torch"):
        want, torch_skip = go(False), go(True)
    assert calls[0] == 1
    names = ["y", "S", "count", "q", "k", "wide", "u", "g", "lam", "D"]
    assert_close(got, want, names, tol)
    assert_close(torch_skip, want, names, tol)  # skip on the torch path


@pytest.mark.parametrize("order", ["vkq", "qvk"])
@pytest.mark.parametrize("B,T,H,Gq,C", [(2, 32, 4, 1, 8), (1, 24, 4, 2, 4), (3, 16, 4, 2, 8)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_gradient_into_the_wide_input(monkeypatch, order, B, T, H, Gq, C, dtype, tol, nthreads):
    """q, k, v column views that tile one contiguous (B, T, W) tensor (the layer's conv
    output): the C block writes their gradients into one gradient of that tensor (no three
    gradients and a cat): the wide gradient and the others against the torch path, groups of
    1 and 2 heads summed in C or (B < threads) per head then summed, T on the chunk grid,
    two column orders. The wide path must run (counted)."""
    from rnnzoo.ops.native import log_linear as nl
    hits = []
    wide_fn = nl._wide
    monkeypatch.setattr(nl, "_wide", lambda q, k, v: hits.append(wide_fn(q, k, v)) or hits[-1])
    gen = torch.Generator().manual_seed(B * T + H)
    K, V, L = 3, 4, 6
    widths = dict(q=Gq * K, k=Gq * K, v=H * V)
    wide = torch.randn(B, T, sum(widths.values()), generator=gen, dtype=dtype)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype)
    lam = torch.rand(B, T, H, L, generator=gen, dtype=dtype) + 0.5
    u = torch.rand(B, T, H, generator=gen, dtype=dtype) + 0.1
    D = torch.randn(H, generator=gen, dtype=dtype)
    ins = [wide, g, lam, u, D]
    for t in ins:
        t.requires_grad_()
    wy = torch.randn(B, T, H, V, generator=gen, dtype=dtype)

    def go():
        cols = dict(zip(order, wide.split([widths[c] for c in order], -1)))
        q, k = (cols[c].unflatten(-1, (Gq, K)) for c in "qk")
        y, (S1, _) = ll.log_linear_attention(q, k, cols["v"].unflatten(-1, (H, V)), g, lam,
                                             v_scale=u, skip=D, chunk_size=C, scale=1.0)
        grads = torch.autograd.grad((y * wy).sum() + S1.square().sum(), ins)
        return [y, S1, *grads]

    with threads(nthreads):
        got = go()
    assert len(hits) == 1 and hits[0] is not None
    with backend.force("torch"):
        want = go()
    assert_close(got, want, ["y", "S", "wide", "g", "lam", "u", "D"], tol)


def _small_case(seed):
    """float64 q, k (2, 21, 1, 3), v (2, 21, 2, 4), g, u (2, 21, 2), lam (2, 21, 2, 6) by
    name, and the generator's randn; the bad step t0 = 9."""
    B, T, H, L, K, V = 2, 21, 2, 6, 3, 4
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    return dict(q=r(B, T, 1, K), k=r(B, T, 1, K), v=r(B, T, H, V),
                g=-torch.rand(B, T, H, generator=gen, dtype=torch.float64),
                lam=torch.rand(B, T, H, L, generator=gen, dtype=torch.float64) + 0.5,
                u=torch.rand(B, T, H, generator=gen, dtype=torch.float64) + 0.1), r


@pytest.mark.parametrize("name", ["q", "v", "u"])
def test_skip_with_a_non_finite_input(calls, name):
    """A non-finite input sends the call through ops.finite's rerun: the skip is then added
    to that run's output (the policy's NaN where D v itself is NaN), equal to the run without
    skip plus D v; no rows at different counts needed."""
    ins, r = _small_case(12)
    H, t0 = 2, 9
    D = r(H)
    x = ins[name].clone()
    x[0, t0].view(-1)[0] = float("nan")
    ins[name] = x
    a = dict(v_scale=ins["u"], chunk_size=4)
    args = [ins[n] for n in ("q", "k", "v", "g", "lam")]
    y, (S1, _) = ll.log_linear_attention(*args, skip=D, **a)
    y0, (S0, _) = ll.log_linear_attention(*args, **a)
    assert calls[0] == 4  # each call: the C block reports, the rerun on cleaned inputs
    want = y0 + D[:, None] * ins["v"]
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(S1, S0, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert bool(y[0, t0].isnan().all()) and not bool(y[1].isnan().any())


@pytest.mark.parametrize("name", ["q", "k", "v", "g", "lam", "u"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_c_block_reports_non_finite_inputs(calls, name, bad):
    """The C block runs before any host check and reports a non-finite input itself; the call
    then runs again on ops.finite's cleaned inputs: outputs before the bad step as without it,
    NaN at it (a read input: q, lam) or from it on (a written one: k, v, g, u) in its row, the
    rest as without it, the other row untouched."""
    ins, _ = _small_case(11)
    t0 = 9

    def go(d):
        return ll.log_linear_attention(d["q"], d["k"], d["v"], d["g"], d["lam"], v_scale=d["u"],
                                       chunk_size=8)[0]

    clean = go(ins)
    assert calls[0] == 1
    broken = dict(ins)
    broken[name] = ins[name].clone()
    broken[name][1, t0] = bad
    y = go(broken)
    assert calls[0] == 3  # the unchecked run, then the one on cleaned inputs
    torch.testing.assert_close(y[0], clean[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y[1, :t0], clean[1, :t0], rtol=1e-12, atol=1e-12)
    if name in ("q", "lam"):
        assert bool(y[1, t0].isnan().all())
        torch.testing.assert_close(y[1, t0 + 1:], clean[1, t0 + 1:], rtol=1e-12, atol=1e-12)
    else:
        assert bool(y[1, t0:].isnan().all())
