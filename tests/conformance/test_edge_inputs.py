"""Edge inputs of the layer protocol (docs/design.md section 4) on every registered layer:
each is refused with one clear error naming what was wrong, or handled, never a raw error
from deep inside a kernel."""

from __future__ import annotations

import pytest
import torch
from test_conformance import NAMES, flat, make


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_is_refused(name):
    """Batch 0 in every mode, step and lengths: one ValueError (60 layers raised
    IndexError / RuntimeError from reshapes, FFTs or reductions before)."""
    layer = make(name, torch.float32)
    d = layer.d_model
    for mode in ("auto", *layer.modes):
        with pytest.raises(ValueError, match=r"x must hold at least one sequence .*\(0, 5, "):
            layer(torch.randn(0, 5, d), mode=mode)
    with pytest.raises(ValueError, match=r"x must hold at least one sequence"):
        layer(torch.randn(0, 5, d), lengths=torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x_t must hold at least one sequence"):
        layer.step(torch.randn(0, d))


@pytest.mark.parametrize("name", NAMES)
def test_cpu_autocast_computes_in_the_parameters_dtype(name):
    """Under torch.autocast("cpu", bfloat16) a layer runs with autocast off: every mode,
    step, and the backward pass equal the plain float32 run, states in float32. Before: 21
    layers raised dtype errors (s4d / s5 FFTs, the cell layers' C steps, linear attention's
    parallel form), 10 kept bfloat16 states, titans_mac's chunk mode corrupted the heap."""
    layer = make(name, torch.float32)
    x = torch.randn(2, 6, layer.d_model, generator=torch.Generator().manual_seed(0))
    for mode in ("auto", *layer.modes):
        runs = []
        for on in (True, False):
            xi = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
                y, s = layer(xi, mode=mode)
                y1, s1 = layer.step(x[:, 0])
                if on:  # an autocast region upstream hands it bfloat16: taken as float32
                    xb = x[:, 0].bfloat16()
                    yb, sb = layer.step(xb)
                    yr, sr = layer.step(xb.float())
                    assert all(torch.equal(a, b) for a, b in zip((yb, *flat(sb)), (yr, *flat(sr))))
            loss = y.square().sum() + sum(t.abs().square().sum() for t in flat(s))
            runs.append((y, *flat(s), y1, *flat(s1), torch.autograd.grad(loss, xi)[0]))
        for a, b in zip(*runs):
            assert a.dtype == b.dtype and torch.equal(a, b), mode


class _Entered(Exception):
    pass


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_autocast_is_switched_off_for_the_inputs_device(device, monkeypatch):
    """The autocast a layer switches off is the one of its input's device type (CUDA's for a
    CUDA input, not the CPU's): without a GPU, a fake CUDA tensor (FakeTensorMode) under a
    stand-in for torch.autocast("cuda") that records what is switched and stops there. Before,
    the device type "cpu" was written in (layers/base.py), so a CUDA input under CUDA autocast
    ran with it on."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    on, seen = {device: True}, []

    class Autocast:  # records the switch, then stops the call (the fake input cannot run)
        def __init__(self, device_type, enabled=True, **_):
            seen.append((device_type, enabled))

        def __enter__(self):
            raise _Entered

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch, "is_autocast_enabled", lambda t=None: on.get(t, False))
    monkeypatch.setattr(torch, "autocast", Autocast)
    layer = make("lstm", torch.float32)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x, x_t = torch.empty(2, 3, layer.d_model, device=device), torch.empty(2, layer.d_model,
                                                                          device=device)
    for call in (lambda: layer(x), lambda: layer.step(x_t)):
        seen.clear()
        with pytest.raises(_Entered):
            call()
        assert seen == [(device, False)]
