"""Mamba-2's CPU paths against its PyTorch path (backend.force("torch")): the C conv's
three contiguous pieces x, B, C (`conv_l2(..., splits=...)` in `Mamba2._project`) and the
values dt x with their gradients summed in C (`ops.native.conv.scaled_values`)."""

import pytest
import torch

import rnnzoo
from rnnzoo.ops import backend
from rnnzoo.ops.native import conv as native_conv


def _run(layer, x, state, mode):
    x = x.detach().clone().requires_grad_()
    S, conv_state = (t.detach().clone().requires_grad_() for t in state)
    y, (S1, c1) = layer(x, (S, conv_state), mode=mode)
    torch.manual_seed(3)
    ((y * torch.randn_like(y)).sum() + (S1 * torch.randn_like(S1)).sum()
     + (c1 * torch.randn_like(c1)).sum()).backward()
    grads = [x.grad, S.grad, conv_state.grad] + [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return [y.detach(), S1.detach(), c1.detach()] + grads


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
@pytest.mark.parametrize("B,T,groups,mode,d,P", [(2, 37, 1, "chunk", 8, 4), (1, 5, 2, "chunk", 8, 4),
                                                 (2, 9, 2, "sequential", 8, 4),
                                                 (2, 21, 1, "chunk", 16, 16)])
def test_split_conv_equals_the_torch_path(dtype, tol, B, T, groups, mode, d, P, monkeypatch):
    if native_conv.load() is None:
        pytest.skip("the C conv does not build here")
    torch.manual_seed(0)
    layer = rnnzoo.create("mamba2", d_model=d, d_state=4, head_dim=P, chunk_size=8,
                          n_groups=groups).to(dtype)
    x = torch.randn(B, T, d, dtype=dtype)
    S0, c0 = layer.init_state(B, dtype=dtype)
    state = (torch.randn_like(S0), torch.randn_like(c0))
    calls, scaled = [], []
    real, real_scaled = native_conv.short_conv, native_conv.scaled_values
    monkeypatch.setattr(native_conv, "scaled_values",
                        lambda *a: scaled.append(1) or real_scaled(*a))

    def counted(*args, **kw):
        calls.append(kw.get("splits", args[9] if len(args) > 9 else None))
        return real(*args, **kw)
    monkeypatch.setattr(native_conv, "short_conv", counted)
    got = _run(layer, x, state, mode)
    assert calls == [(layer.d_inner, groups * 4, groups * 4)]  # the split path ran
    assert scaled == [1]
    with backend.force("torch"):
        want = _run(layer, x, state, mode)
    assert len(calls) == 1 and len(scaled) == 1
    for g, w in zip(got, want):
        assert g is not None and w is not None
        assert (g - w).abs().max() <= tol * (1 + w.abs().max())
