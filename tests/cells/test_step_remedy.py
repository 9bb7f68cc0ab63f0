"""The step-loop remedies of rnnzoo.cells.steps on CPU: the compiled step against the reference
loop (outputs, final state, every gradient) through the classic layers' switch; the CUDA-graph
runner's refusal of non-CUDA tensors, its static buffers, its cache key, its capture-and-replay
logic (with torch's capture replaced by a recorder, since CPU tensors cannot be captured) and
its guard against a stale backward.

The fast tests compile with dynamo + AOTAutograd on the eager backend (the tracing and the
forward/backward split, no C++ build); the sweep under `slow` compiles one cell of every
family (cells/<family>.py) with inductor, as on a GPU."""

from __future__ import annotations

import warnings
import weakref

import pytest
import torch

import rnnzoo
from rnnzoo.cells import steps
from rnnzoo.ops import backend
from rnnzoo.registry import CELLS

B, T = 2, 5


def make(name, seed=0):
    info = rnnzoo.registry.get_layer_info(name)
    options = dict(info.tiny)
    d_model = options.pop("d_model", 6)
    torch.manual_seed(seed)
    layer = rnnzoo.create(name, d_model=d_model, **options)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def run(layer, how, mode="sequential", x_seed=1):
    """Outputs, final state and the gradients of x, the initial state and every parameter
    under a fixed random cotangent."""
    g = torch.Generator().manual_seed(x_seed)
    x = torch.randn(B, T, layer.d_model, generator=g).requires_grad_()
    s0 = layer.init_state(B)
    s0 = tuple(torch.randn(s.shape, generator=g) for s in
               (s0 if isinstance(s0, tuple) else (s0,)))
    s0 = tuple(s.requires_grad_() for s in s0)
    with backend.force_steps(how):
        y, s = layer(x, s0 if len(s0) > 1 else s0[0], mode=mode)
    s = s if isinstance(s, tuple) else (s,)
    loss = (y * torch.randn(y.shape, generator=g)).sum() \
        + sum((t * torch.randn(t.shape, generator=g)).sum() for t in s)
    params = list(layer.parameters())
    grads = torch.autograd.grad(loss, [x, *s0, *params], allow_unused=True)
    return [y.detach(), *(t.detach() for t in s)], grads


def assert_same(name, how, mode="sequential", tol=1e-5):
    ref_out, ref_grads = run(make(name), "loop", mode)
    out, grads = run(make(name), how, mode)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(grads, ref_grads):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.fixture
def eager_backend(monkeypatch):
    """dynamo + AOTAutograd without code generation: fast, and still the compiled path."""
    monkeypatch.setattr(steps, "COMPILE_OPTIONS", {"dynamic": False, "backend": "aot_eager"})
    torch._dynamo.reset()


def compiled_steps(monkeypatch):
    """Count the compiled step's calls (the switch really ran the compiled loop)."""
    calls = []
    real = steps.compiled_loop
    monkeypatch.setattr(steps, "compiled_loop", lambda *a: calls.append(1) or real(*a))
    return calls


# -- the compiled step -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lstm", "gru_v3"])
def test_compiled_step_matches_the_loop(name, eager_backend, monkeypatch):
    """A two-tensor state and a RecurrentMatrix (lstm), pieces and hoisted weights (gru_v3):
    outputs, state and all gradients as the reference loop's."""
    calls = compiled_steps(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        assert_same(name, "compiled")
    assert calls


@pytest.mark.slow
def test_compiled_step_with_inductor():
    """One cell through inductor's CPU code generation (what a GPU run uses, on CUDA)."""
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert_same("rnn_tanh", "compiled")


def test_fused_mode_keeps_its_own_form_under_compiled(monkeypatch):
    calls = compiled_steps(monkeypatch)
    assert_same("rnn_tanh", "compiled", mode="fused")
    assert not calls


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(fn, **options):
        def call(*args):
            raise RuntimeError("backend exploded\nsecond line")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(steps, "_failed", set())
    with pytest.warns(RuntimeWarning, match="the MGU step did not compile.*backend exploded"):
        assert_same("mgu", "compiled")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # warned once: the class is remembered
        assert_same("mgu", "compiled")


def test_a_miscompiled_step_falls_back_to_eager_with_one_warning(monkeypatch):
    """A compiler whose step returns other values than the eager step (inductor did, for
    ln_lstm on an H200): the first step's check catches it, the loop's values come out."""
    def wrong(fn, **options):
        def call(parts, state, w):
            new, y = fn(parts, state, w)
            return tuple(s + 1e-2 for s in new), y
        return call
    monkeypatch.setattr(torch, "compile", wrong)
    monkeypatch.setattr(steps, "_failed", set())
    monkeypatch.setattr(steps, "_compiled", weakref.WeakKeyDictionary())
    with pytest.warns(RuntimeWarning, match="the MGU step did not compile.*differ from the eager"):
        assert_same("mgu", "compiled")


def test_an_error_of_the_cell_itself_still_raises(eager_backend, monkeypatch):
    layer = make("gru_v3")
    monkeypatch.setattr(steps, "_failed", set())

    def bad(parts, state, w):
        raise IndexError("the cell's own bug")
    monkeypatch.setattr(layer.cell, "transition", bad)
    with pytest.warns(RuntimeWarning), pytest.raises(IndexError, match="own bug"):
        run(layer, "compiled")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({info.cls.__module__: name for name, info in
                                         reversed(list(CELLS.items()))}.values()))
def test_compiled_step_one_cell_per_family_inductor(name):
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert_same(name, "compiled", tol=1e-4)


# -- the switch --------------------------------------------------------------------------------
def test_step_runner_choice(monkeypatch):
    monkeypatch.delenv("RNNZOO_STEPS", raising=False)
    x = torch.zeros(1)
    assert backend.step_runner("gru", x) == "loop"
    monkeypatch.setitem(backend.AUTO_STEPS, "gru", "graph")
    assert backend.step_runner("gru", x) == "loop"            # auto: CUDA tensors only
    assert backend.step_runner("gru", x.to("meta")) == "loop"
    monkeypatch.setenv("RNNZOO_STEPS", "compiled")
    assert backend.step_runner("gru", x) == "compiled"
    with backend.force_steps("graph"):
        assert backend.step_runner("gru", x) == "graph"
    monkeypatch.setenv("RNNZOO_STEPS", "fast")
    with pytest.raises(ValueError, match="RNNZOO_STEPS: step runner must be one of"):
        backend.step_runner("gru", x)
    with pytest.raises(ValueError, match="force_steps"):
        with backend.force_steps("graphs"):
            pass


# -- the CUDA-graph runner ---------------------------------------------------------------------
def test_graph_refuses_cpu_tensors_with_one_clear_error():
    layer = make("gru")
    with backend.force_steps("graph"), pytest.raises(
            ValueError, match="^steps 'graph': CUDA graphs need CUDA tensors, got a tensor on cpu"):
        layer(torch.randn(B, T, layer.d_model), mode="sequential")


def test_static_args_are_fresh_detached_copies():
    x = torch.randn(2, 3, 4).transpose(1, 2).requires_grad_()  # not contiguous
    h = torch.randn(2, 5) * 2                                 # not a leaf, no grad
    sx, sh = steps.static_args((x, h))
    assert sx.is_contiguous() and sx.is_leaf and sx.requires_grad
    assert sh.is_leaf and not sh.requires_grad
    for s, t in ((sx, x), (sh, h)):
        assert s.shape == t.shape and s.dtype == t.dtype and s.device == t.device
        assert s.data_ptr() != t.data_ptr()
        torch.testing.assert_close(s, t.detach(), rtol=0, atol=0)


def test_graph_key_tells_captures_apart():
    cell = CELLS["gru"].cls(3, 4)
    x, h = torch.randn(2, 5, 3), torch.randn(2, 4)
    key = steps.graph_key(cell, x, (h,), False)
    assert key == steps.graph_key(cell, x.clone(), (h.clone(),), False)
    others = [steps.graph_key(cell, x[:, :4], (h,), False),
              steps.graph_key(cell, x.double(), (h,), False),
              steps.graph_key(cell, x.requires_grad_(), (h,), False),
              steps.graph_key(cell, x.detach(), (h,), True)]
    with torch.no_grad():
        others.append(steps.graph_key(cell, x.detach(), (h,), False))
    cell.eval()
    others.append(steps.graph_key(cell, x.detach(), (h,), False))
    cell.train()
    cell.weight_hh.requires_grad_(False)
    others.append(steps.graph_key(cell, x.detach(), (h,), False))
    assert len({key, *others}) == len(others) + 1


class _Recorder:
    """Stands in for torch.cuda's capture on CPU: records each capture and runs the module
    through its static buffers, as a replay does."""

    def __init__(self):
        self.captures = []

    def graphed(self, module, static, allow_unused_input=False):
        self.captures.append(("train", len(static)))

        def call(*inputs):
            for buf, t in zip(static, inputs):
                with torch.no_grad():
                    buf.copy_(t)
            outs = module(*inputs)  # autograd through the module: the recorded backward
            return outs
        return call

    def forward_only(self, module, static):
        self.captures.append(("infer", len(static)))

        def call(*inputs):
            for buf, t in zip(static, inputs):
                buf.copy_(t)
            return module(*static)
        return call


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(steps, "_check_cuda", lambda x, state: None)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", rec.graphed)
    monkeypatch.setattr(steps, "_capture_forward", rec.forward_only)
    return rec


def test_graph_runner_captures_once_per_key_and_matches_the_loop(recorder):
    assert_same("lstm", "graph")                     # captured for gradients, replayed
    assert recorder.captures == [("train", 3)]       # x, h, c
    layer = make("mgu")
    run(layer, "graph")
    run(layer, "graph")                              # same key: replayed, not captured
    assert recorder.captures == [("train", 3), ("train", 2)]
    n = len(recorder.captures)
    with torch.no_grad(), backend.force_steps("graph"):
        y, s = layer(torch.randn(B, T, layer.d_model), mode="sequential")
        y2, _ = layer(torch.randn(B, T + 1, layer.d_model), mode="sequential")
    assert recorder.captures[n:] == [("infer", 2), ("infer", 2)]
    assert y.shape == (B, T, layer.d_model) and y2.shape == (B, T + 1, layer.d_model)


def test_graph_outputs_are_copies_and_a_stale_backward_raises(recorder):
    layer = make("gru")
    x = torch.randn(B, T, layer.d_model, requires_grad=True)
    with backend.force_steps("graph"):
        y1, _ = layer(x, mode="sequential")
        y1.sum().backward()                          # one forward per backward: fine
        y2, _ = layer(x, mode="sequential")
        y3, _ = layer(x, mode="sequential")          # replayed again before y2's backward
    y3.sum().backward()
    with pytest.raises(RuntimeError, match="run again at the same shapes before the backward"):
        y2.sum().backward()
