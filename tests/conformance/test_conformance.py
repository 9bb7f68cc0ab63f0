"""The contract of docs/design.md section 4, run on every registered layer.

A new layer is tested here the moment it is registered: the instance comes
from the registry's `tiny` options, and every mode is compared with the
reference mode (the first in `modes`).
"""

from __future__ import annotations

import copy

import pytest
import torch

import rnnzoo
from rnnzoo.layers.base import valid_mask

LAYERS = rnnzoo.list_layers()
NAMES = [i.name for i in LAYERS]
MODE_CASES = [(i.name, m) for i in LAYERS for m in i.modes]
OTHER_MODE_CASES = [(i.name, m) for i in LAYERS for m in i.modes[1:]]
T = 11  # not a power of two, several chunks for any tiny chunk_size


def make(name, dtype=torch.float64, seed=0):
    info = rnnzoo.registry.get_layer_info(name)
    options = dict(info.tiny)
    d_model = options.pop("d_model", 8)
    torch.manual_seed(seed)
    layer = rnnzoo.create(name, d_model=d_model, **options).to(dtype)
    _perturb_(layer, seed)
    return layer


def _perturb_(layer, seed):
    """Move every parameter off its initial value, so zero-initialised parts are exercised."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            if p.is_floating_point() or p.is_complex():
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def inputs(layer, B=2, T=T, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, layer.d_model, generator=g, dtype=torch.float64).to(dtype)


def random_state(layer, B, dtype=torch.float64, seed=2):
    """A non-zero state of the right layout: the state after a short random prefix."""
    with torch.no_grad():
        _, s = layer(inputs(layer, B=B, T=3, dtype=dtype, seed=seed), mode=layer.reference_mode)
    return s


def flat(state):
    return list(state) if isinstance(state, (tuple, list)) else [state]


def max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(flat(a), flat(b)))


def scale(t):
    return max(x.abs().max().item() for x in flat(t)) + 1e-6


def run_grads(layer, x, state, mode):
    """Gradients of a fixed random functional of (y, final state) w.r.t. x, state and params."""
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in flat(state))
    y, s = layer(x, state if len(state) > 1 else state[0], mode=mode)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for t in flat(s):
        w = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
        loss = loss + (t * w).real.sum()
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *state, *params], allow_unused=True)
    return [torch.zeros_like(t) if gr is None else gr
            for t, gr in zip([x, *state, *params], grads)]


# 1. every mode equals the reference mode ---------------------------------------------------
@pytest.mark.parametrize("name,mode", OTHER_MODE_CASES)
def test_modes_equal_reference_float64(name, mode):
    layer = make(name)
    x, s0 = inputs(layer), random_state(layer, 2)
    y_ref, s_ref = layer(x, s0, mode=layer.reference_mode)
    y, s = layer(x, s0, mode=mode)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert max_err(y, y_ref) < 1e-9
    assert max_err(s, s_ref) < 1e-9


@pytest.mark.parametrize("name,mode", MODE_CASES + [(n, "auto") for n in NAMES])
def test_modes_equal_reference_float32(name, mode):
    layer = make(name, torch.float32)
    x = inputs(layer, dtype=torch.float32)
    y_ref, s_ref = layer(x, mode=layer.reference_mode)
    y, s = layer(x, mode=mode)
    tol = rnnzoo.registry.get_layer_info(name).tolerances.get("float32", 1e-4)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert max_err(y, y_ref) < tol * scale(y_ref)
    assert max_err(s, s_ref) < tol * scale(s_ref)
    for t in flat(s):  # states are kept in float32 (or complex64)
        assert t.dtype in (torch.float32, torch.complex64)


# 2. step run over the sequence equals forward ---------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_step_equals_forward(name):
    layer = make(name)
    x, s0 = inputs(layer), random_state(layer, 2)
    y_ref, s_ref = layer(x, s0, mode=layer.reference_mode)
    s, ys = s0, []
    for t in range(x.shape[1]):
        y_t, s = layer.step(x[:, t], s)
        assert y_t.shape == (2, layer.d_model)
        ys.append(y_t)
    assert max_err(torch.stack(ys, 1), y_ref) < 1e-9
    assert max_err(s, s_ref) < 1e-9
    y0, _ = layer.step(x[:, 0])  # state=None is init_state
    assert max_err(y0, layer(x[:, :1])[0][:, 0]) < 1e-9


# 3. state carry-over ---------------------------------------------------------------------
@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_split_sequence_equals_whole(name, mode):
    layer = make(name)
    x = inputs(layer)
    y, s = layer(x, mode=mode)
    for cut in (1, 5):
        y1, s1 = layer(x[:, :cut], mode=mode)
        y2, s2 = layer(x[:, cut:], s1, mode=mode)
        assert max_err(torch.cat([y1, y2], 1), y) < 1e-9
        assert max_err(s2, s) < 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_init_state_layout(name):
    layer = make(name)
    s = layer.init_state(3)
    assert all(isinstance(t, torch.Tensor) for t in flat(s))
    assert all(t.shape[0] == 3 for t in flat(s))
    assert all(t.dtype in (torch.float32, torch.complex64) for t in flat(s))
    s64 = layer.init_state(3, dtype=torch.float64)
    assert all(t.dtype in (torch.float64, torch.complex128) for t in flat(s64))
    assert max_err(layer(inputs(layer, B=3))[0], layer(inputs(layer, B=3), s64)[0]) == 0


# 3b. the returned state is the caller's own ---------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_state_owns_its_memory(name):
    """No returned state tensor is a view (of x, of a (batch, time, ...) intermediate): writing
    into x afterwards leaves the state as it was, and the state holds no more memory than its
    own elements. The call leaves x and the given state as they were."""
    layer = make(name)
    info = rnnzoo.registry.get_layer_info(name)
    for mode in (*info.modes, "step"):
        x, s0 = inputs(layer), random_state(layer, 2)
        x_in, s_in = x.clone(), [t.clone() for t in flat(s0)]
        with torch.no_grad():
            _, s = layer.step(x[:, -1], s0) if mode == "step" else layer(x, s0, mode=mode)
        assert torch.equal(x, x_in) and max_err(s0, s_in) == 0, f"{mode}: inputs written"
        kept = [t.clone() for t in flat(s)]
        x.mul_(-3.0).add_(7.0)
        assert max_err(s, kept) == 0, f"{mode}: the state changed when x was written"
        for i, t in enumerate(flat(s)):
            held, own = t.untyped_storage().nbytes(), t.numel() * t.element_size()
            assert held <= own, \
                f"{mode}: state[{i}] {tuple(t.shape)} holds {held} bytes, {own} its own"


# 4. gradients equal the reference's; gradcheck ---------------------------------------------
@pytest.mark.parametrize("name,mode", OTHER_MODE_CASES)
def test_gradients_equal_reference(name, mode):
    layer = make(name)
    x, s0 = inputs(layer), random_state(layer, 2)
    ref = run_grads(layer, x, s0, layer.reference_mode)
    got = run_grads(layer, x, s0, mode)
    for r, g in zip(ref, got):
        assert (r - g).abs().max().item() < 1e-8 * (1 + r.abs().max().item())


@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_every_parameter_gets_a_gradient(name, mode):
    """From a fresh state (as training starts), every trainable parameter reaches the output
    and final state: else DDP's reducer fails, and an option that drops a part of the block
    has left its parameters behind."""
    layer = make(name)
    y, s = layer(inputs(layer), mode=mode)
    loss = y.square().sum() + sum(t.abs().square().sum() for t in flat(s))
    named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    unused = [n for (n, _), g in zip(named, grads) if g is None]
    assert not unused, f"trainable parameters that get no gradient: {unused}"


GRADCHECK_ENTRIES = 64  # a larger real state is checked through 8 random directions


@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_gradcheck(name, mode):
    """Finite differences against the analytical Jacobian of (y, final state) in (x, state).
    A state of more than GRADCHECK_ENTRIES real entries (the memories: up to 361) enters as
    s0 + P z and leaves as s R, P and R random (n, 8): an error e in a column of the state's
    Jacobian shows in R^T e, an error anywhere in its rows in (.) P (zero only on a null set),
    for ~20x fewer passes than entry by entry."""
    layer = make(name)
    x = inputs(layer, B=1, T=4).requires_grad_()
    s0 = [t.detach() for t in flat(random_state(layer, 1))]
    n = sum(t.numel() for t in s0)

    def run(x, state):
        y, s = layer(x, tuple(state) if len(state) > 1 else state[0], mode=mode)
        return y, flat(s)

    if n <= GRADCHECK_ENTRIES or any(t.is_complex() for t in s0):
        def f(x, *state):
            y, s = run(x, state)
            return (y, *s)

        args = (x, *(t.requires_grad_() for t in s0))
    else:
        g = torch.Generator().manual_seed(3)
        P, R = (torch.randn(n, 8, generator=g, dtype=torch.float64) for _ in range(2))
        sizes = [t.numel() for t in s0]

        def f(x, z):
            v = torch.cat([t.reshape(-1) for t in s0]) + P @ z
            y, s = run(x, [p.view_as(t) for p, t in zip(v.split(sizes), s0)])
            return y, torch.cat([t.reshape(-1) for t in s]) @ R

        args = (x, torch.zeros(8, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)


# 5. lengths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_lengths_ignore_padding(name, mode):
    layer = make(name)
    lengths = torch.tensor([T, 6, 1, 0])
    x, s0 = inputs(layer, B=4), random_state(layer, 4)
    junk = 100 * inputs(layer, B=4, seed=9)
    x_pad = torch.where(valid_mask(lengths, T).unsqueeze(-1), x, junk)
    y, s = layer(x_pad, s0, mode=mode, lengths=lengths)
    assert y.shape == x.shape
    for b, n in enumerate(lengths.tolist()):
        s0_b = tuple(t[b:b + 1] for t in flat(s0))
        s0_b = s0_b if len(s0_b) > 1 else s0_b[0]
        if n:
            y_b, s_b = layer(x[b:b + 1, :n], s0_b, mode=mode)
            assert max_err(y[b:b + 1, :n], y_b) < 1e-9
        else:
            s_b = s0_b
        assert y[b, n:].abs().max().item() == 0 if n < T else True
        assert max_err(tuple(t[b:b + 1] for t in flat(s)), flat(s_b)) < 1e-9


# 6. bad input raises the documented error ------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_errors(name):
    layer = make(name, torch.float32)
    d = layer.d_model
    x = torch.randn(2, 5, d)
    with pytest.raises(ValueError, match=r"x must have shape .*got shape \(2, 5\)"):
        layer(x[:, :, 0])
    with pytest.raises(ValueError, match=rf"d_model={d}.*\(2, 5, {d + 1}\)"):
        layer(torch.randn(2, 5, d + 1))
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        layer(torch.ones(2, 5, d, dtype=torch.long))
    with pytest.raises(TypeError, match="float64.*parameters are torch.float32"):
        layer(x.double())
    with pytest.raises(ValueError, match="mode must be"):
        layer(x, mode="no-such-mode")
    wrong_batch = layer.init_state(3)
    with pytest.raises(ValueError, match=r"state.* must have shape"):
        layer(x, wrong_batch)
    with pytest.raises(TypeError, match="state must be"):
        layer(x, "not a state")
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        layer(x, lengths=torch.ones(2))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        layer(x, lengths=torch.tensor([6, 1]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        layer(x, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"x_t must have shape"):
        layer.step(x)


# 7. bfloat16 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_bfloat16_close_to_float32(name, mode):
    info = rnnzoo.registry.get_layer_info(name)
    tol = info.tolerances.get("bfloat16", 5e-2)
    layer16 = make(name, torch.bfloat16)
    layer32 = copy.deepcopy(layer16).float()  # the same (rounded) weights
    x = inputs(layer32, dtype=torch.bfloat16)
    y16, s16 = layer16(x, mode=mode)
    y32, _ = layer32(x.float(), mode=mode)
    assert y16.dtype == torch.bfloat16
    assert torch.isfinite(y16.float()).all()
    assert all(t.dtype in (torch.float32, torch.complex64) for t in flat(s16))
    assert max_err(y16.float(), y32) < tol * scale(y32)


# 8. every mode runs on the meta device -------------------------------------------------------
# The meta device has shapes and dtypes but no values: a tensor made off the input's device
# meets a device mismatch, and a value read back to the host (.item(), bool(tensor),
# .tolist(), a data-dependent shape) raises. The cases that must read values are the
# registry's `host_reads` (with the reason): those are checked to fail, so the list can
# neither miss a read nor keep a stale entry.
META_CASES = [(i.name, c) for i in LAYERS for c in (*i.modes, "step", "lengths")]
HOST_READ = (r"item\(\) cannot be called on meta|Cannot copy out of meta|no data|"
             r"data-independent|no fake impl or Meta kernel")


def _run_on_meta(layer, case):
    x = torch.randn(2, T, layer.d_model).to("meta")
    if case == "step":
        y, s = layer.step(x[:, 0])
        y, s = layer.step(x[:, 1], s)
    elif case == "lengths":  # lengths on the CPU, where torch.nn.utils.rnn keeps them
        y, s = layer(x, layer.init_state(2, device="meta"), lengths=torch.tensor([T, 4]))
    else:  # twice, the second from a state; then the backward pass
        x.requires_grad_()
        y, s = layer(x, mode=case)
        y, s = layer(x, s, mode=case)
        loss = y.sum() + sum((t.real if t.is_complex() else t).sum() for t in flat(s))
        loss.backward()
        assert x.grad.device.type == "meta"
    assert y.device.type == "meta" and y.shape == (x[:, 0] if case == "step" else x).shape
    assert all(t.device.type == "meta" for t in flat(s))


@pytest.mark.parametrize("name,case", META_CASES)
def test_runs_on_meta_device(name, case):
    info = rnnzoo.registry.get_layer_info(name)
    layer = make(name, torch.float32).to("meta")
    reason = info.host_reads.get(case)
    if reason is None:
        _run_on_meta(layer, case)
    else:
        with pytest.raises((RuntimeError, NotImplementedError), match=HOST_READ):
            _run_on_meta(layer, case)
        print(f"{name} {case}: reads values on the host by design: {reason}")


def test_host_reads_name_real_cases():
    for info in LAYERS:
        unknown = set(info.host_reads) - {*info.modes, "step", "lengths"}
        assert not unknown, f"{info.name}: host_reads names {unknown}"
        assert all(isinstance(r, str) and r for r in info.host_reads.values())


def test_attention_with_a_window_reads_nothing():
    """The sliding-window attention streams without a host read (full attention, the tiny
    instance, must read its position: see its host_reads)."""
    layer = rnnzoo.create("attention", d_model=4, num_heads=2, window=3).to("meta")
    for case in ("sequential", "parallel", "step"):
        _run_on_meta(layer, case)
# 5b. non-finite padding never leaks; non-finite valid input never runs backwards in time ----
NONFINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("fill", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_lengths_nonfinite_padding(name, mode, fill):
    """NaN / inf at padded steps: valid outputs and final states equal those of a clean
    padded run, padded outputs are exactly 0."""
    layer = make(name)
    lengths = torch.tensor([T, 6, 1, 0])
    x, s0 = inputs(layer, B=4), random_state(layer, 4)
    mask = valid_mask(lengths, T).unsqueeze(-1)
    with torch.no_grad():
        y_clean, s_clean = layer(torch.where(mask, x, 0.5), s0, mode=mode, lengths=lengths)
        y, s = layer(torch.where(mask, x, fill), s0, mode=mode, lengths=lengths)
    assert max_err(torch.where(mask, y, 0), torch.where(mask, y_clean, 0)) < 1e-9
    assert bool((y[~mask.squeeze(-1)] == 0).all()), "padded outputs must be exactly 0"
    assert all(bool(torch.isfinite(t).all()) for t in flat(s)), "padding reached the state"
    assert max_err(s, s_clean) < 1e-9


@pytest.mark.parametrize("fill", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_nonfinite_input_is_causal(name, mode, fill):
    """A non-finite input at step t of one sequence leaves every output before t, and every
    output of the other sequences, finite and equal to the clean run's (any mode)."""
    layer = make(name)
    x, s0 = inputs(layer), random_state(layer, 2)
    with torch.no_grad():
        y_clean, _ = layer(x, s0, mode=mode)
        for t in (6, 9, T - 1):
            x_bad = x.clone()
            x_bad[0, t, 0] = fill
            y, _ = layer(x_bad, s0, mode=mode)
            assert bool(torch.isfinite(y[0, :t]).all()), f"non-finite output before t={t}"
            assert max_err(y[0, :t], y_clean[0, :t]) < 1e-9
            assert max_err(y[1], y_clean[1]) < 1e-9, "leaked into another sequence"


# 5c. packed sequences (cu_seqlens) equal each sequence alone --------------------------------
CU = torch.tensor([0, 4, 5, 9, 9 + 1, T])  # ragged: 4, 1, 4, 1, 1 steps


def _packed_grads(layer, x, s0, mode):
    """(y, state, grads wrt x, state, params) of the packed run and of each document alone."""
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(x.shape, generator=g, dtype=x.dtype)
    ws = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in flat(s0)]
    params = [p for p in layer.parameters() if p.requires_grad]

    def grads(loss, leaves):
        got = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, got)]

    xp = x.clone().requires_grad_()
    sp = tuple(t.clone().requires_grad_() for t in flat(s0))
    y, s = layer(xp, sp if len(sp) > 1 else sp[0], mode=mode, cu_seqlens=CU)
    loss = (y * wy).sum() + sum((t * w).real.sum() for t, w in zip(flat(s), ws))
    packed = (y, s, grads(loss, [xp, *sp, *params]))

    ys, ss, gx, gs, gp = [], [], [], [], None
    for n in range(len(CU) - 1):
        a, b = CU[n].item(), CU[n + 1].item()
        xn = x[:, a:b].clone().requires_grad_()
        sn = tuple(t[n:n + 1].clone().requires_grad_() for t in flat(s0))
        yn, s_n = layer(xn, sn if len(sn) > 1 else sn[0], mode=mode)
        loss = (yn * wy[:, a:b]).sum() + sum((t * w[n:n + 1]).real.sum()
                                              for t, w in zip(flat(s_n), ws))
        gr = grads(loss, [xn, *sn, *params])
        ys.append(yn), ss.append(flat(s_n)), gx.append(gr[0]), gs.append(gr[1:1 + len(sn)])
        gp = gr[1 + len(sn):] if gp is None else [u + v for u, v in zip(gp, gr[1 + len(sn):])]
    alone_state = [torch.cat(parts) for parts in zip(*ss)]
    alone_gs = [torch.cat(parts) for parts in zip(*gs)]
    alone = (torch.cat(ys, 1), alone_state, [torch.cat(gx, 1), *alone_gs, *gp])
    return packed, alone


@pytest.mark.parametrize("name,mode", MODE_CASES)
def test_cu_seqlens_equals_each_sequence_alone(name, mode):
    """Packed documents (ragged, length-1 ones included) from their own states: outputs,
    final states and gradients (input, states, parameters) equal each document run alone."""
    layer = make(name)
    x, s0 = inputs(layer, B=1), random_state(layer, len(CU) - 1)
    (y, s, g), (y1, s1, g1) = _packed_grads(layer, x, s0, mode)
    assert y.shape == x.shape
    assert max_err(y, y1) < 1e-9
    assert max_err(s, s1) < 1e-9
    for a, b in zip(g, g1):
        assert (a - b).abs().max().item() < 1e-8 * (1 + b.abs().max().item())
    y0, _ = layer(x, mode=mode, cu_seqlens=CU)  # state=None: every document from init_state
    assert max_err(y0[:, :4], layer(x[:, :4], mode=mode)[0]) < 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_cu_seqlens_on_meta_and_bad_values(name):
    """Packed input on `meta` (cu_seqlens on the CPU, as the loader makes it) reads on the
    host exactly where the `lengths` path does; bad boundaries raise one ValueError."""
    info = rnnzoo.registry.get_layer_info(name)
    layer = make(name, torch.float32)
    x = torch.randn(1, T, layer.d_model)
    for bad in ([1, 4, T], [0, 6, 4, T], [0, 4, T - 1]):
        with pytest.raises(ValueError, match=r"cu_seqlens must start at 0, never decrease"):
            layer(x, cu_seqlens=torch.tensor(bad))
    with pytest.raises(ValueError, match=r"batch 1"):
        layer(x.expand(2, -1, -1), cu_seqlens=CU)
    with pytest.raises(TypeError, match=r"cu_seqlens must be an integer tensor"):
        layer(x, cu_seqlens=CU.float())
    with pytest.raises(ValueError, match=r"state.* must have shape"):
        layer(x, layer.init_state(2), cu_seqlens=CU)
    layer = layer.to("meta")
    xm = x.to("meta")
    reason = info.host_reads.get("lengths") or info.host_reads.get(layer.auto_mode(xm))
    if reason is None:
        y, s = layer(xm, cu_seqlens=CU)
        assert y.device.type == "meta" and y.shape == xm.shape
        assert all(t.device.type == "meta" and t.shape[0] == len(CU) - 1 for t in flat(s))
    else:
        with pytest.raises((RuntimeError, NotImplementedError), match=HOST_READ):
            layer(xm, cu_seqlens=CU)
