"""ops.native.gated_norm: the C output heads of mamba2 (skip, gate, group RMSNorm; the gate
alone without gated_norm), mamba (skip and gate) and mlstm (head LayerNorm, skip, gate)
against each layer's PyTorch path under backend.force("torch"): outputs and the gradients of
the input and of every parameter, float64 to 1e-10 on 2 threads (the rows split, each part's parameter gradients summed),
float32 to 1e-5 on 1."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads
from _native_check import threads as threads_

from rnnzoo import create
from rnnzoo.ops import backend
from rnnzoo.ops.native import gated_norm

CASES = [("mamba2", dict(d_model=8, d_state=4, head_dim=4, chunk_size=4)),
         ("mamba2", dict(d_model=8, d_state=4, head_dim=4, n_groups=2, chunk_size=4)),
         ("mamba2", dict(d_model=8, d_state=4, head_dim=4, gated_norm=False, chunk_size=4)),
         ("mamba", dict(d_model=8, d_state=4, dt_rank=2)),
         ("mlstm", dict(d_model=8, num_heads=2, qkv_blocksize=4, chunk_size=4))]


@pytest.fixture
def calls(monkeypatch):
    return counter(monkeypatch, gated_norm, "gate_rms", "norm_gate")


def _run(layer, x):
    y, _ = layer(x, mode=layer.auto_mode(x))
    return outputs_and_grads([y], [x, *layer.parameters()])


@pytest.mark.parametrize("dtype,tol,threads", [(torch.float64, 1e-10, 2),
                                               (torch.float32, 1e-5, 1)])
@pytest.mark.parametrize("name,opts", CASES)
def test_native_gated_norm_matches_torch(calls, dtype, tol, name, opts, threads):
    with threads_(threads):
        torch.manual_seed(0)
        layer = create(name, **opts).to(dtype)
        with torch.no_grad():  # away from the init's ones and zeros: every gradient nonzero
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(3, 9, 8, dtype=dtype, generator=torch.Generator().manual_seed(2))
        x.requires_grad_()
        got = _run(layer, x)
        assert calls[0] == 1
        with backend.force("torch"):
            want = _run(layer, x)
    assert calls[0] == 1
    names = ["y", "x", *(n for n, _ in layer.named_parameters())]
    assert_close(got, want, names, tol)


def test_native_gated_norm_not_for_half():
    """bfloat16 keeps the PyTorch path (mixed dtypes: use_native declines)."""
    layer = create("mlstm", d_model=8, num_heads=2, qkv_blocksize=4).to(torch.bfloat16)
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    assert not backend.use_native(x.float(), x)
    y, _ = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
