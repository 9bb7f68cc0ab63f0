"""The Triton kernels behind the ops, reached through the layers: every hook of
`rnnzoo.ops.backend.use_triton` runs its kernel and gives the PyTorch path's results.

One small layer per hook runs in its parallel (or fused) mode twice, inside
`backend.force("triton")` and inside `backend.force("torch")`: outputs, final state and the
gradients of the input, the initial state and every parameter agree in float32 (relative to
each tensor's scale), and a counter on the Triton function proves the kernel ran. On CPU the
kernels run under TRITON_INTERPRET=1 (as `make test` starts pytest; see _triton_interp.py);
on a GPU, compiled, on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from _triton_interp import CUDA, DEVICE, INTERPRETED, needs_kernels, rerun_in_child  # noqa: E402

import rnnzoo  # noqa: E402
from rnnzoo.ops import backend  # noqa: E402

if not (INTERPRETED or CUDA):
    test_interpreted_in_a_child_process = rerun_in_child(__file__)

# layer, mode, the Triton module and function its hook calls
HOOKS = [
    ("lru", "scan", "scan", "linear_scan"),           # complex a and b: two real planes
    ("hawk", "scan", "scan", "linear_scan"),
    ("mamba", "scan", "selective_scan", "selective_scan"),
    ("gla", "chunk", "chunk_linear", "gated_linear_attention"),    # vector decay
    ("hgrn2", "chunk", "chunk_linear", "gated_linear_attention"),
    ("rwkv6", "chunk", "chunk_linear", "gated_linear_attention"),  # the bonus u
    ("deltanet", "chunk", "chunk_delta", "delta_rule"),
    ("gated_deltanet", "chunk", "chunk_delta", "delta_rule"),
    ("deltaproduct", "chunk", "chunk_delta", "delta_rule"),        # via _product_as_delta
    ("mlstm", "chunk", "chunk_mlstm", "mlstm"),
    ("rwkv7", "chunk", "chunk_rwkv7", "rwkv7"),
    ("lstm", "fused", "rnn", "lstm_sequence"),
    ("gru", "fused", "rnn", "gru_sequence"),
    ("slstm", "fused", "rnn", "slstm_sequence"),
]


def make(name, seed=0):
    info = rnnzoo.registry.get_layer_info(name)
    options = dict(info.tiny)
    d_model = options.pop("d_model", 8)
    torch.manual_seed(seed)
    layer = rnnzoo.create(name, d_model=d_model, **options)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # off the initial values, so zero-initialised parts count
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer.to(DEVICE)


def flat(state):
    return list(state) if isinstance(state, (tuple, list)) else [state]


def run(layer, x, state, mode):
    """(y, final state, gradients of a fixed random functional w.r.t. x, state, params)."""
    x = x.clone().requires_grad_()
    state = [s.clone().requires_grad_() for s in flat(state)]
    y, s = layer(x, tuple(state) if len(state) > 1 else state[0], mode=mode)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g).to(y.device)).sum()
    for t in flat(s):
        loss = loss + (t * torch.randn(t.shape, generator=g).to(t.device)).real.sum()
    params = list(layer.parameters())
    grads = torch.autograd.grad(loss, [x, *state, *params], allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip([x, *state, *params], grads)]
    return [y.detach(), *(t.detach() for t in flat(s)), *grads]


def counted(monkeypatch, module_name, fn_name):
    """Wrap ops.triton.<module_name>.<fn_name> with a call counter."""
    import importlib
    module = importlib.import_module(f"rnnzoo.ops.triton.{module_name}")
    fn, calls = getattr(module, fn_name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, fn_name, wrapper)
    return calls


@needs_kernels
@pytest.mark.parametrize("name,mode,module,fn", HOOKS, ids=[h[0] for h in HOOKS])
def test_layer_on_triton_equals_torch(name, mode, module, fn, monkeypatch):
    # cuDNN's RNNs (the torch path of lstm and gru on CUDA) use TF32 by default: 2.5e-4 off
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    layer = make(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, layer.d_model, generator=g).to(DEVICE)
    with torch.no_grad(), backend.force("torch"):  # a non-zero initial state
        _, s0 = layer(torch.randn(2, 3, layer.d_model, generator=g).to(DEVICE),
                      mode=layer.reference_mode)
    calls = counted(monkeypatch, module, fn)
    with backend.force("torch"):
        ref = run(layer, x, s0, mode)
    assert not calls
    with backend.force("triton"):
        got = run(layer, x, s0, mode)
    assert calls, f"{name} {mode} did not call ops.triton.{module}.{fn}"
    for i, (r, t) in enumerate(zip(ref, got)):
        assert t.shape == r.shape and t.dtype == r.dtype, i
        err = (t - r).abs().max().item()
        assert err <= 1e-4 * (1 + r.abs().max().item()), (i, err)


def test_force_triton_selects_triton_on_cpu():
    x = torch.zeros(2)
    assert not backend.use_triton(x)  # CPU: the PyTorch path unless forced
    with backend.force("triton"):
        assert backend.use_triton(x) and backend.use_triton(x, auto=False)
        with backend.force("torch"):
            assert not backend.use_triton(x)
    assert not backend.use_triton(x, auto=False)


def test_float64_stays_on_torch(monkeypatch):
    """The kernels refuse float64: inside force("triton") the ops keep it on PyTorch."""
    calls = counted(monkeypatch, "chunk_linear", "gated_linear_attention") \
        if INTERPRETED or CUDA else []
    layer = make("gla").double()
    with backend.force("triton"):
        y, _ = layer(torch.randn(1, 5, layer.d_model, dtype=torch.float64, device=DEVICE),
                     mode="chunk")
    assert y.dtype == torch.float64 and not calls


def test_import_rnnzoo_does_not_import_triton():
    import subprocess
    import sys
    code = "import sys, rnnzoo; rnnzoo.list_layers(); print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("strength", [0.1, 30.0])  # one block factorised / exact blocks
@pytest.mark.parametrize("c", [2, 3])               # sub-chunks, or one block (8 % 3 != 0)
@pytest.mark.parametrize("strict", [False, True])
def test_gla_intra_chunk_scores_without_host_reads(strength, c, strict):
    """The vector-decay scores of the chunkwise GLA off the CPU (where no span is read to
    choose a form) equal the definition sum_k q_ik e^{Gq_ik - G_jk} k_jk, like the CPU's."""
    from rnnzoo.ops.chunk.linear import _intra_vector
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 8, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    g = -strength * torch.rand(2, 8, 4, generator=gen, dtype=torch.float64)
    G = g.cumsum(1)
    Gq = G - g if strict else G
    want = torch.einsum("bik,bijk,bjk->bij", q, (Gq[:, :, None] - G[:, None]).clamp(max=0).exp(), k)
    want = want.tril(-1 if strict else 0)
    for read in (False, True):
        got = _intra_vector(q, k, Gq, G, strict, c, read_values=read)
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), read
