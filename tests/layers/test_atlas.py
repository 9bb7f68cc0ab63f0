"""ATLAS (arXiv:2505.23735): the Omega rule, the polynomial feature map and the Muon step as
the paper's equations in a plain loop; with a window of one token and no Muon the rule is
Titans' online update on the same tensors; Newton-Schulz makes a matrix nearly orthogonal
with the same singular vectors."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.ops.atlas import atlas_sequential, newton_schulz
from rnnzoo.ops.feature_maps import features
from rnnzoo.ops.memory import titans_chunked, titans_sequential


def perturbed(**options):
    torch.manual_seed(0)
    layer = rnnzoo.create("atlas", **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def tensors(layer, x):
    *mem, conv = layer.init_state(x.shape[0], dtype=x.dtype)
    return (*layer.op_inputs(x, conv)[:-1], tuple(mem))


def ns_loop(X, steps=5):
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = 3.4445 * X - 4.7750 * A @ X + 2.0315 * A @ A @ X
    return X


def paper_loop(q, k, v, theta, alpha, eta, gamma, C, W0, c, fmap, muon):
    """A linear memory, one head of one sequence at a time: the Omega rule's gradient of
    sum_{i in the window} gamma_i 1/2 |phi(k_i) W' - v_i|^2 at the chunk start W', the
    momentum and forgetting, then the read phi(q) W_t."""
    B, T, H, K = q.shape
    out = torch.zeros(B, T, H, K, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            W = W0[h].clone()
            S = torch.zeros_like(W)
            for t in range(T):
                if t % C == 0:
                    Wg = W.clone()
                g = torch.zeros_like(W)
                for i in range(max(0, t - c + 1), t + 1):
                    f = features(k[b, i, h], fmap)
                    g += gamma[b, i, h] * torch.outer(f, f @ Wg - v[b, i, h])
                if muon:
                    S = eta[b, t, h] * S - g
                    W = W0[h] + (1 - alpha[b, t, h]) * (W - W0[h]) + theta[b, t, h] * ns_loop(S)
                else:
                    S = eta[b, t, h] * S - theta[b, t, h] * g
                    W = W0[h] + (1 - alpha[b, t, h]) * (W - W0[h]) + S
                out[b, t, h] = features(q[b, t, h], fmap) @ W
    return out


@pytest.mark.parametrize("muon", [False, True], ids=["omeganet", "atlas"])
def test_equals_the_papers_loop(muon):
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, memory_depth=1, chunk_size=3,
                      window=4, feature_map="taylor", muon=muon)
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    q, k, v, theta, alpha, eta, gamma, mem = tensors(layer, x)
    init = [p.detach() for p in layer.memory]
    with torch.no_grad():
        z, _ = atlas_sequential("linear", q, k, v, theta, alpha, eta, gamma, 3, init, mem,
                                "taylor", muon)
        want = paper_loop(q, k, v, theta, alpha, eta, gamma, 3, init[0], 4, "taylor", muon)
        one = paper_loop(q, k, v, theta, alpha, eta, gamma, 3, init[0], 1, "taylor", muon)
    assert (z - want).abs().max() < 1e-10 * want.abs().max()
    assert (want - one).abs().max() > 1e-3                     # the window matters


@pytest.mark.parametrize("depth", [1, 2])
def test_window_one_is_the_titans_update(depth):
    """window=1 (gamma = 1), no feature map, no Muon: Titans' momentum and decay update on the
    same tensors (a weight-only memory, gradients at the chunk start), sequential and chunked."""
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, memory_depth=depth, chunk_size=3,
                      window=1, muon=False)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    q, k, v, theta, alpha, eta, gamma, mem = tensors(layer, x)
    init = [p.detach() for p in layer.memory]
    titans_init = [t for W in init for t in (W, torch.zeros_like(W[..., 0, :]))]
    titans = rnnzoo.create("titans", d_model=8, num_heads=2, head_dim=4, memory_depth=depth,
                           chunk_size=3).double()
    *tmem, _ = titans.init_state(2, dtype=torch.float64)
    ones = torch.ones(4, 4, dtype=torch.float64)
    with torch.no_grad():
        one = torch.ones_like(gamma)                              # the token's own weight 1
        z, _ = atlas_sequential(layer.kind, q, k, v, theta, alpha, eta, one, 3, init, mem)
        for op in (titans_sequential, titans_chunked):
            zt, _ = op(layer.kind, q, k, v, theta, alpha, eta, 3, titans_init, tuple(tmem),
                       ones[0], ones[1] * 0, 1e-6, False, False)
            assert (z - zt).abs().max() < 1e-12 * zt.abs().max()
        z_gam, _ = atlas_sequential(layer.kind, q, k, v, theta, alpha, eta, gamma, 3, init,
                                    mem)
    assert (z - z_gam).abs().max() > 1e-4                       # gamma weighs the token


def test_newton_schulz_is_nearly_orthogonal_with_the_same_singular_vectors():
    """Muon's five quintic steps take singular values spread over two decades into
    [0.68, 1.2] (the iteration's stated band) and keep the singular vectors: NS(G) =
    U p(Sigma) V^T, so G^T NS(G) is symmetric positive definite."""
    torch.manual_seed(0)
    for shape in ((4, 4), (6, 3), (3, 6)):
        U, _, Vh = torch.linalg.svd(torch.randn(*shape, dtype=torch.float64),
                                    full_matrices=False)
        sigma = torch.logspace(0, -2, min(shape), dtype=torch.float64)
        G = U @ torch.diag(sigma) @ Vh
        X = newton_schulz(G)
        s = torch.linalg.svdvals(X)
        assert s.min() > 0.68 and s.max() < 1.2
        P = G.T @ X
        assert (P - P.T).abs().max() < 1e-12 and torch.linalg.eigvalsh(P).min() > -1e-12
        assert (X - ns_loop(G) if shape[0] <= shape[1] else X - ns_loop(G.T).T).abs().max() \
            < 1e-12


def test_options_checked():
    with pytest.raises(ValueError, match="feature_map"):
        rnnzoo.create("atlas", d_model=8, feature_map="cubic")
    with pytest.raises(ValueError, match="window"):
        rnnzoo.create("atlas", d_model=8, window=0)


def _saved_bytes(fn):
    """Bytes of the tensors autograd keeps for the backward while fn() runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_checkpointed_segments_equal_the_plain_loop_and_keep_less(monkeypatch):
    """T = 40 runs as segments of 16, 16, 8 under checkpointing: the same outputs, final state
    and gradients as the steps kept whole, with a fraction of the saved tensors (the graph
    keeps each segment's entering state, not every step's)."""
    from rnnzoo.ops import atlas
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, memory_depth=2, chunk_size=3,
                      window=3, muon=True)
    x = torch.randn(2, 40, 8, dtype=torch.float64, requires_grad=True)

    def run():
        out, total = _saved_bytes(lambda: layer(x, mode="sequential"))
        y, state = out
        g = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
                   for t in (y, *state) if t.is_floating_point())
        return [y, *torch.autograd.grad(loss, [x, *layer.parameters()])], total

    got, kept = run()
    monkeypatch.setattr(atlas, "SEGMENT", 10 ** 9)                 # one segment: no checkpoint
    want, whole = run()
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max() <= 1e-12 * (1 + b.abs().max())
    assert kept < whole / 4, (kept, whole)


@pytest.mark.parametrize("depth,window,muon,fmap", [(1, 1, False, None), (2, 3, True, None),
                                                    (1, 4, True, "taylor"), (2, 2, False, None)])
def test_chunk_equals_sequential_from_any_offset_in_checkpointed_segments(monkeypatch, depth,
                                                                          window, muon, fmap):
    """The chunk form (every S_t of a chunk at once, Newton-Schulz on all of them, M_t a decayed
    cumulative sum) is the sequential recurrence: from a state 5 steps in (offset 2 in chunks of
    3, the window's tokens in the state), run as segments of one chunk under checkpointing (a
    tiny GROUP) and whole, the same outputs, final state and gradients."""
    from rnnzoo.ops import atlas
    layer = perturbed(d_model=8, num_heads=2, head_dim=4, memory_depth=depth, chunk_size=3,
                      window=window, feature_map=fmap, muon=muon)
    with torch.no_grad():
        _, s0 = layer(torch.randn(2, 5, 8, dtype=torch.float64), mode="sequential")
    x = torch.randn(2, 13, 8, dtype=torch.float64, requires_grad=True)

    def run(mode):
        state = tuple(t.detach().clone().requires_grad_(t.is_floating_point()) for t in s0)
        out, saved = _saved_bytes(lambda: layer(x, state, mode=mode))
        y, s = out
        g = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
                   for t in (y, *s) if t.is_floating_point())
        wrt = [x, *[t for t in state if t.requires_grad], *layer.parameters()]
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        return [y, *s, *[torch.zeros_like(w) if d is None else d
                         for w, d in zip(wrt, grads)]], saved

    want, _ = run("sequential")
    whole, kept_whole = run("chunk")
    monkeypatch.setattr(atlas, "GROUP", 1)                        # one chunk a segment
    parts, kept = run("chunk")
    for got in (whole, parts):
        for a, b in zip(got, want, strict=True):
            assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max())
    assert kept < kept_whole
    assert layer.auto_mode(x) == "chunk"


def test_newton_schulz_on_the_gram_matrix_is_the_iteration():
    """A wide or tall G (long side >= 2x the short) runs the steps on its s x s Gram matrix:
    the plain iteration's value, and a finite (zero) gradient at G = 0, where |G|_F has none."""
    torch.manual_seed(0)
    for shape in ((5, 16), (16, 5), (3, 2, 4, 9)):
        G = torch.randn(*shape, dtype=torch.float64)
        X = newton_schulz(G)
        flat = G.reshape(-1, *shape[-2:])
        want = torch.stack([ns_loop(g) if g.shape[0] <= g.shape[1] else ns_loop(g.T).T
                            for g in flat]).view(X.shape)
        assert (X - want).abs().max() < 1e-12
    G = torch.zeros(4, 12, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(newton_schulz(G).sum(), G)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_newton_schulz_in_c_equals_the_pytorch_form(dtype, tol, monkeypatch):
    """ops.native.newton_schulz (the Gram form in C, its products on mm.h's
    register tiles: s = 16, 32 and odd, full, in-place and packed column tiles) against the PyTorch form: values and
    gradients, tall and wide, a zero matrix (trace 0: eps alone), ns_steps other than 5."""
    from rnnzoo.ops import backend
    from rnnzoo.ops.native import newton_schulz as native_ns
    if native_ns.load() is None:
        pytest.skip("no C compiler")
    calls = []
    real = native_ns.newton_schulz
    monkeypatch.setattr(native_ns, "newton_schulz", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(0)
    # s = 16 (sq16; with l a multiple of 16 float32's Gram is one vector's dots, hsum_rows);
    # s = 8, l = 24: the same dots for float64 (8 doubles a vector with AVX-512)
    for shape, steps in (((3, 16, 40), 5), ((2, 64, 16), 5), ((2, 32, 64), 2), ((5, 3, 7), 3),
                         ((2, 9, 20), 1), ((2, 8, 24), 5)):
        G = torch.randn(*shape, generator=gen, dtype=dtype)
        G[0] = 0
        w = torch.randn(*shape, generator=gen, dtype=dtype)
        out = []
        for force in (None, "torch"):
            Gi = G.clone().requires_grad_()
            if force:
                with backend.force(force):
                    y = newton_schulz(Gi, steps)
            else:
                y = newton_schulz(Gi, steps)
            (grad,) = torch.autograd.grad((y * w).sum(), Gi)
            out.append((y, grad))
        (y, g), (y_ref, g_ref) = out
        assert (y - y_ref).abs().max() <= tol * y_ref.abs().max()
        assert (g - g_ref).abs().max() <= tol * g_ref.abs().max() and g_ref.abs().max() > 0
    assert len(calls) == 6
