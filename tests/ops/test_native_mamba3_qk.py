"""ops.native.mamba3_qk: Mamba-3's SISO queries and keys in C (norm, bias, rotation, scale,
C . B) against their PyTorch form: values and the gradients of every input (the raw rows as
slices of a wider projection, both norm weights and biases, the angles, the scale), float64
and float32, one group and two, 1 and 2 threads; and mamba3's chunk mode through it against
its sequential mode."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter
from _native_check import threads as threads_
from _second_order import second_order

import rnnzoo
from rnnzoo.ops.native import mamba3_qk


@pytest.mark.parametrize("opts", [dict(), dict(n_groups=2, is_outproj_norm=True, rope_fraction=1.0)])
def test_mamba3_chunk_through_the_kernel_equals_sequential(monkeypatch, opts):
    """mamba3's SISO chunk mode on the CPU runs q and k through the kernel (counted) and
    equals its sequential mode in float64: outputs, the final state (h, B, x) and the
    gradients of the input, the initial state and every parameter."""
    calls = counter(monkeypatch, mamba3_qk, "qk_turned")
    torch.manual_seed(0)
    layer = rnnzoo.create("mamba3", d_model=8, d_state=10, head_dim=4, chunk_size=4,
                          **opts).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    state = [0.3 * torch.randn_like(t).requires_grad_() for t in layer.init_state(2, dtype=torch.float64)]
    ins = [x, *state, *layer.parameters()]

    def run(mode):
        y, s = layer(x, tuple(state), mode=mode)
        loss = (y * torch.cos(y)).sum() + sum((t * t.sin()).sum() for t in s)
        return [y, *s, *torch.autograd.grad(loss, ins)]

    got = run("chunk")
    assert calls[0] == 1
    want = run("sequential")
    names = ["y", "h", "B", "x_last", "x", "h0", "B0", "x0", *(n for n, _ in layer.named_parameters())]
    assert_close(got, want, names, 1e-10)


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_mamba3_siso_chunk_nonfinite_input_is_causal(fill):
    """The conformance suite's causality check on the SISO path (its registered tiny config is
    MIMO): a non-finite input at step t leaves every earlier output finite and unchanged."""
    torch.manual_seed(0)
    layer = rnnzoo.create("mamba3", d_model=8, d_state=10, head_dim=4, chunk_size=4).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        y_clean, _ = layer(x, mode="chunk")
        for t in (3, 8):
            x_bad = x.clone()
            x_bad[0, t, 0] = fill
            y, _ = layer(x_bad, mode="chunk")
            assert bool(torch.isfinite(y[0, :t]).all())
            assert (y[0, :t] - y_clean[0, :t]).abs().max() < 1e-12
            assert (y[1] - y_clean[1]).abs().max() < 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("B,T,G,H,N,n,threads", [(2, 37, 1, 3, 10, 2, 2), (1, 1, 2, 4, 12, 6, 1),
                                                 (2, 70, 1, 2, 8, 4, 1),
                                                 # whole 64-byte rows in float32 too (q and
                                                 # k written by streaming stores)
                                                 (2, 40, 1, 2, 16, 4, 2)])
def test_mamba3_qk_turned_matches_torch(dtype, tol, B, T, G, H, N, n, threads):
    """`qk_turned` (the angles from phi and dt inside the kernel: pi tanh(phi) dt summed in
    float64 and wrapped, their cos and sin) against `torch_qk` on `torch_turns`' angles:
    q, k, cb, the last angles and the gradients of the raw rows and phi (slices of one wider
    projection), dt, both norm weights and biases and the scale; steps large enough that the
    angles wrap many times."""
    lib = mamba3_qk.load()
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    wide = r(B, T, 2 * G * N + n + 3)
    wide[..., -n:] *= 2
    wB, wC, bB, bC = 1 + r(N) / 4, 1 + r(N) / 4, r(H, N), r(H, N)
    dt, s = 2 * r(B, T, H).abs(), r(B, T, H)
    ins = [t.requires_grad_() for t in (wide, wB, wC, bB, bC, dt, s)]
    ws = [r(B, T, H, N), r(B, T, H, N), r(B, T, H), r(B, H, n)]

    def run(f):
        Bx, Cx, phi = wide[..., 1:G * N + 1], wide[..., G * N + 2:2 * G * N + 2], wide[..., -n:]
        outs = list(f(Bx, Cx, wB, wC, bB, bC, phi, dt, s, 1e-5))[:4]
        loss = sum((o * w).sum() for o, w in zip(outs, ws))
        return outs + list(torch.autograd.grad(loss, ins))

    def torch_form(Bx, Cx, wB, wC, bB, bC, phi, dt, s, eps):
        theta = mamba3_qk.torch_turns(phi, dt)
        return (*mamba3_qk.torch_qk(Bx, Cx, wB, wC, bB, bC, theta, s, eps), theta[:, -1])

    with threads_(threads):
        got = run(lambda *a: mamba3_qk.qk_turned(lib, *a))
    want = run(torch_form)
    assert_close(got, want, ["q", "k", "cb", "end", "wide", "wB", "wC", "bB", "bC", "dt", "s"],
                 tol)
    # fin: each (row, head)'s q and k summed; not finite where a raw row holds an inf
    Bx, Cx, phi = wide[..., 1:G * N + 1], wide[..., G * N + 2:2 * G * N + 2], wide[..., -n:]
    with torch.no_grad():
        fin = mamba3_qk.qk_turned(lib, Bx, Cx, wB, wC, bB, bC, phi, dt, s, 1e-5)[4]
        assert_close([fin], [(want[0] + want[1]).sum(-1)], ["fin"], tol)
        Cx = Cx.clone()
        Cx[0, T // 2, 0] = float("inf")
        fin = mamba3_qk.qk_turned(lib, Bx, Cx, wB, wC, bB, bC, phi, dt, s, 1e-5)[4]
        assert not bool(torch.isfinite(fin[0, T // 2]).all())  # the heads of group 0
        assert bool(torch.isfinite(fin[0, :T // 2]).all()) and bool(torch.isfinite(fin[1:]).all())


@pytest.mark.parametrize("zero", [(), (1,), (2,), (1, 2)])
def test_mamba3_siso_chunk_state_without_grad(zero):
    """The SISO chunk path skips the trapezoid's beta_0 term only where the state's B or x
    make it zero (a fresh state): states without gradients, with B, x or both zero, equal the
    sequential mode (outputs and final state, float64)."""
    torch.manual_seed(0)
    layer = rnnzoo.create("mamba3", d_model=8, d_state=10, head_dim=4, chunk_size=4).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    state = [0.3 * torch.randn_like(t) for t in layer.init_state(2, dtype=torch.float64)]
    for i in zero:
        state[i].zero_()
    with torch.no_grad():
        got = layer(x, tuple(state), mode="chunk")
        want = layer(x, tuple(state), mode="sequential")
    assert_close([got[0], *got[1]], [want[0], *want[1]], ["y", "h", "B", "x"], 1e-10)


def test_mamba3_siso_chunk_finite_qk_from_the_kernel(monkeypatch):
    """mamba3's SISO chunk path tells the SSD that q and k are finite (`finite_qk`, from the
    qk kernel's sums) on finite inputs only: a NaN input step makes it run the full check."""
    import rnnzoo.layers.mamba3 as m3
    seen = []
    real = m3.ssd

    def spy(*a, **kw):
        seen.append(kw.get("finite_qk"))
        return real(*a, **kw)
    monkeypatch.setattr(m3, "ssd", spy)
    torch.manual_seed(0)
    layer = rnnzoo.create("mamba3", d_model=8, d_state=10, head_dim=4, chunk_size=4).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    layer(x, mode="chunk")
    x[1, 6, 0] = float("nan")
    layer(x, mode="chunk")
    assert seen == [True, False]


@pytest.mark.parametrize("bad", [None, "v", "g"])
def test_ssd_finite_qk_checks_v_and_decays(bad):
    """ops.chunk.linear.ssd(finite_qk=True) (q and k known finite) equals the full check:
    on finite inputs, and with a non-finite value or decay at one step (marked alike)."""
    from rnnzoo.ops.chunk.linear import ssd
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    B, T, H, K, V = 2, 11, 2, 5, 3
    q, k, v, g = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), -r(B, T, H).abs()
    if bad == "v":
        v[0, 4, 1, 2] = float("inf")
    elif bad == "g":
        g[1, 7, 0] = float("nan")
    got = ssd(q, k, v, g, scale=1.0, chunk_size=4, finite_qk=True)
    want = ssd(q, k, v, g, scale=1.0, chunk_size=4)
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


@pytest.mark.parametrize("phi_scale", [1e-5, 1e-3, 1.0])
def test_mamba3_qk_turned_float32_angles_as_accurate_as_torch(phi_scale):
    """float32 angles over a long sequence: the kernel's theta_T (pi tanh(phi) dt summed) within
    a few times torch's float32 form of the float64 angles, small phi included (there a tanh
    as 2 / (1 + e^{-2x}) - 1 was off by an ulp of 1 a step, which the sum kept: ~100x torch's
    error at phi ~ 1e-5)."""
    import math
    lib = mamba3_qk.load()
    gen = torch.Generator().manual_seed(0)
    B, T, G, H, N, n = 2, 512, 1, 2, 8, 4
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    Bx, Cx, wB, wC, bB, bC = r(B, T, G * N), r(B, T, G * N), r(N), r(N), r(H, N), r(H, N)
    phi, dt, s = phi_scale * r(B, T, n), r(B, T, H).abs(), r(B, T, H)
    end = mamba3_qk.qk_turned(lib, Bx, Cx, wB, wC, bB, bC, phi, dt, s, 1e-5)[3]
    truth = mamba3_qk.torch_turns(phi.double(), dt.double())[:, -1]
    torch_f32 = mamba3_qk.torch_turns(phi, dt)[:, -1]

    def err(a):  # on the circle
        d = (a.double() - truth).remainder(2 * math.pi)
        return torch.minimum(d, 2 * math.pi - d).max().item()
    assert err(end) <= 4 * err(torch_f32) + 1e-6, (err(end), err(torch_f32))


def test_mamba3_qk_turned_second_derivative():
    """Under create_graph=True _QKTurned's `twice` (`_torch_turned`: torch_turns and torch_qk
    replayed over the saved inputs) gives the second derivative of q, k, cb and the last
    angles in the raw rows and phi (slices of one wider projection), both norm weights and
    biases, dt and the scale, float64, against a central difference and the PyTorch form's own
    double backward."""
    lib = mamba3_qk.load()
    B, T, G, H, N, n = 2, 5, 1, 2, 6, 2
    gen = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    ins = [r(B, T, 2 * G * N + n + 3), 1 + r(N) / 4, 1 + r(N) / 4, r(H, N), r(H, N),
           0.3 * r(B, T, H).abs(), r(B, T, H)]
    ins = [t.requires_grad_() for t in ins]

    def run(f):
        def call(wide, wB, wC, bB, bC, dt, s):
            Bx, Cx = wide[..., 1:G * N + 1], wide[..., G * N + 2:2 * G * N + 2]
            return tuple(f(Bx, Cx, wB, wC, bB, bC, wide[..., -n:], dt, s, 1e-5))[:4]
        return call

    native, plain = run(lambda *a: mamba3_qk.qk_turned(lib, *a)), run(mamba3_qk._torch_turned)
    for a, b in zip(native(*ins), plain(*ins)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    second_order(native, ins, plain)
