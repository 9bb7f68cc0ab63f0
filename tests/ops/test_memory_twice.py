"""Second derivatives through the test-time memories' and the feature maps' C nodes (their
`twice` replays the caller's PyTorch form over the node's saved inputs): each op under
create_graph=True, float64, against a central difference of its first-order gradient and
against the same second derivative on the PyTorch path (tests/ops/_second_order.py). Each
case counts the node's `twice` calls, so that it cannot pass without them."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from _second_order import second_order

from rnnzoo.ops import atlas, backend, feature_maps, memory
from rnnzoo.ops.native import atlas_scan, miras_chunk, miras_read, titans_scan, ttt_loop, ttt_read
from rnnzoo.ops.native import attention as native_attention


@pytest.fixture
def twice(monkeypatch):
    """{node name: its `twice` calls} for the nodes this module checks."""
    calls = {}
    nodes = [miras_chunk._NativeChunks, miras_read._NativeRead, ttt_loop._Loop,
             ttt_loop._MLPLoop, ttt_read._Read, titans_scan._NativeTitans,
             titans_scan._NativeGates, titans_scan._NativeSegment, atlas_scan._Momenta,
             atlas_scan._Reads, atlas._Chunks, native_attention._Pairs,
             native_attention._FusedSDPA, feature_maps._PolyHeads]
    for node in nodes:
        def counted(ctx, *grads, _twice=node.twice, _name=node.__name__):
            calls[_name] = calls.get(_name, 0) + 1
            return _twice(ctx, *grads)
        monkeypatch.setattr(node, "twice", staticmethod(counted))
        # the guard (first_order.Function) bound the class's own twice: rebind it
        backward = node.backward

        def guarded(ctx, *grads, _backward=backward, _node=node):
            if torch.is_grad_enabled():
                return _node.twice(ctx, *grads)
            return _backward(ctx, *grads)
        monkeypatch.setattr(node, "backward", staticmethod(guarded))
    return calls


def _r(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _torch(fn):
    @functools.wraps(fn)
    def run(*args):
        with backend.force("torch"):
            return fn(*args)
    return run


@pytest.mark.parametrize("ret,bias", [("kl", "l2"), ("lq", "lp"), ("l2", "huber")])
def test_miras_chunked(ret, bias, twice):
    """_NativeChunks and _NativeRead (Memora, Moneta, Yaad's rules, the MLP memory)."""
    g = torch.Generator().manual_seed(0)
    B, T, H, K = 2, 6, 1, 2
    q, k = (F.normalize(_r(g, B, T, H, K), dim=-1).requires_grad_() for _ in range(2))
    v = _r(g, B, T, H, K).requires_grad_()
    eta, alpha = torch.sigmoid(_r(g, B, T, H)), torch.sigmoid(_r(g, B, T, H) + 2)
    eta.requires_grad_()
    delta = 0.5 * F.softplus(_r(g, B, T, H))
    init = [_r(g, H, i, o) / i ** 0.5 for i, o in ((K, 4 * K), (4 * K, K))]
    state = memory.miras_init_state("mlp", B, H, K, dtype=torch.float64)

    def run(q, k, v, eta):
        return memory.miras_chunked("mlp", q, k, v, eta, alpha, delta, 4, init, state,
                                    memory.attentional_bias(bias, 3.0), memory.retention(ret))[0]

    second_order(run, [q, k, v, eta], _torch(run), tol=1e-6)
    assert twice.get("_NativeChunks") and twice.get("_NativeRead")


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_ttt_minibatch(kind, twice):
    """_Loop / _MLPLoop and _Read (TTT's mini-batch loop and dual-form reads)."""
    g = torch.Generator().manual_seed(1)
    B, T, H, K, M = 2, 6, 1, 3, 4
    q, k, v = (_r(g, B, T, H, K).requires_grad_() for _ in range(3))
    lr = (0.3 * torch.sigmoid(_r(g, B, T, H))).requires_grad_()
    tok = 1.0 / torch.arange(1, M + 1, dtype=torch.float64)
    dims = [(K, K)] if kind == "linear" else [(K, 4 * K), (4 * K, K)]
    init = [t for i, o in dims for t in (_r(g, H, i, o) / i ** 0.5, 0.1 * _r(g, H, o))]
    w, b = 1 + 0.1 * _r(g, H, K), 0.1 * _r(g, H, K)
    state = memory.ttt_init_state(kind, B, H, K, dtype=torch.float64)

    def run(q, k, v, lr):
        return memory.ttt_minibatch(kind, q, k, v, lr, tok, init, state, w, b, 1e-6)[0]

    second_order(run, [q, k, v, lr], _torch(run), tol=1e-6)
    assert twice.get("_Loop" if kind == "linear" else "_MLPLoop") and twice.get("_Read")


def test_titans_chunked(twice):
    """_NativeGates and _NativeTitans (Titans' linear memory)."""
    g = torch.Generator().manual_seed(2)
    B, T, H, K = 2, 7, 1, 3
    q, k = (F.normalize(_r(g, B, T, H, K), dim=-1).requires_grad_() for _ in range(2))
    v = _r(g, B, T, H, K).requires_grad_()
    theta, alpha, eta = (torch.sigmoid(_r(g, B, T, H)).requires_grad_() for _ in range(3))
    init = [_r(g, H, K, K) / K ** 0.5, torch.zeros(H, K, dtype=torch.float64)]
    state = memory.titans_init_state("linear", B, H, K, dtype=torch.float64)

    def run(q, k, v, theta, alpha, eta):
        return memory.titans_chunked("linear", q, k, v, theta, alpha, eta, 4, init, state,
                                     None, None, 1e-6, bias=False)[0]

    second_order(run, [q, k, v, theta, alpha, eta], _torch(run), tol=1e-6)
    assert twice.get("_NativeGates") and twice.get("_NativeTitans")


def test_titans_segment(twice):
    """_NativeSegment (one chunk, the gates' sigmoids inside) against its PyTorch form."""
    lib = titans_scan.load()
    if lib is None:
        pytest.skip("titans_scan does not build")
    g = torch.Generator().manual_seed(3)
    B, n, H, K = 2, 3, 2, 3
    q, k = (F.normalize(_r(g, B, n, H, K), dim=-1).requires_grad_() for _ in range(2))
    v = _r(g, B, n, H, K).requires_grad_()
    gates = _r(g, B, n, 3 * H).requires_grad_()
    W0 = (_r(g, H, K, K) / K ** 0.5).requires_grad_()
    P0, M0, S0 = ((0.3 * _r(g, B, H, K, K)).requires_grad_() for _ in range(3))

    def run(q, k, v, gates, W0, P0, M0, S0):
        return memory.titans_segment(lib, q, k, v, gates, W0, P0, M0, S0, 0.5)

    def plain(q, k, v, gates, W0, P0, M0, S0):
        return memory._titans_segment_plain(q, k, v, gates, W0, P0, M0, S0, 0.5)

    second_order(run, [q, k, v, gates, W0, P0, M0, S0], plain, tol=1e-6)
    assert twice.get("_NativeSegment")


@pytest.mark.parametrize("feature_map,muon", [(None, True), ("square", True), (None, False)])
def test_atlas_chunked(feature_map, muon, twice):
    """_Chunks (its run of chunks), or _Momenta and _Reads (the momenta's and memories'
    recurrences) where _Chunks does not apply (Muon on a square memory)."""
    g = torch.Generator().manual_seed(4)
    B, T, H, K, window = 2, 6, 1, 2, 2
    q, k = (F.normalize(_r(g, B, T, H, K), dim=-1).requires_grad_() for _ in range(2))
    v = _r(g, B, T, H, K).requires_grad_()
    theta, eta = (0.5 * torch.sigmoid(_r(g, B, T, H)) for _ in range(2))
    alpha, gamma = torch.sigmoid(_r(g, B, T, H) - 2), torch.sigmoid(_r(g, B, T, H))
    theta.requires_grad_()
    F_ = feature_maps.feature_size(feature_map, K) if feature_map else K
    init = [_r(g, H, F_, K) / F_ ** 0.5]
    state = atlas.atlas_init_state("linear", B, H, K, window, feature_map,
                                   dtype=torch.float64)

    def run(q, k, v, theta):
        return atlas.atlas_chunked("linear", q, k, v, theta, alpha, eta, gamma, 4, init, state,
                                   feature_map, muon)[0]

    second_order(run, [q, k, v, theta], _torch(run), tol=1e-6)
    fused = feature_map is not None or not muon
    assert twice.get("_Chunks") if fused else (twice.get("_Momenta") and twice.get("_Reads"))


@pytest.mark.parametrize("feature_map", ["taylor", "square"])
@pytest.mark.parametrize("mode", ["parallel", "chunk"])
def test_feature_attention(feature_map, mode, twice):
    """_PolyHeads (the parallel form's kernel matrix) and _Pairs (the packed features)."""
    g = torch.Generator().manual_seed(5)
    B, T, H, d, V = 2, 5, 1, 2, 2
    q, k = ((0.5 * _r(g, B, T, H, d)).requires_grad_() for _ in range(2))
    v = _r(g, B, T, H, V).requires_grad_()
    S0 = 0.3 * _r(g, B, H, feature_maps.feature_size(feature_map, d), V + 1)
    S0.requires_grad_()

    def run(q, k, v, S0):
        return feature_maps.feature_attention(q, k, v, feature_map, mode=mode, initial_state=S0,
                                              chunk_size=2)

    second_order(run, [q, k, v, S0], _torch(run), tol=1e-6)
    assert twice.get("_Pairs") and (mode == "chunk" or twice.get("_PolyHeads"))


@pytest.mark.parametrize("masked", [False, True])
def test_fused_sdpa(masked, twice):
    """_FusedSDPA: torch's fused attention (CPU flash) first order as it is, its second
    derivative through the math form."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (_r(g, 2, 2, 5, 3).requires_grad_() for _ in range(3))
    mask = (torch.rand(5, 5, generator=g) < 0.7) | torch.eye(5, dtype=torch.bool) if masked \
        else None

    def run(q, k, v):
        return native_attention.fused_sdpa(q, k, v, mask, not masked, 0.5)

    def plain(q, k, v):
        return native_attention._math_sdpa(q, k, v, mask, not masked, 0.5)

    second_order(run, [q, k, v], plain, tol=1e-6)
    assert twice.get("_FusedSDPA")
    with torch.no_grad():  # the first order is torch's fused call itself, bit for bit
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                is_causal=not masked, scale=0.5)
    got = run(q, k, v)
    assert torch.equal(got.detach(), want)
    dq = torch.autograd.grad(got.square().sum(), q)[0]
    q2 = q.detach().requires_grad_()
    ref = torch.nn.functional.scaled_dot_product_attention(q2, k, v, attn_mask=mask,
                                                           is_causal=not masked, scale=0.5)
    assert torch.equal(dq, torch.autograd.grad(ref.square().sum(), q2)[0])
