"""torch.compile of the layers' parallel modes: a sample per family compiles with
fullgraph=True (no graph break: no data-dependent branch, no `.item()`) and its output and
gradients (input and parameters) equal eager's.

The default tier traces with the "aot_eager" backend (dynamo + AOT autograd, the part that
breaks on a data-dependent branch, without the C++ code generator's minutes on a busy
CPU); the slow tier runs the code generator ("inductor") on a wider sample.

Exceptions to fullgraph=True, each for its reason:
- lstm's "fused" mode calls torch.nn.LSTM, whose CPU kernel (aten.mkldnn_rnn_layer) has
  no fake-tensor rule in torch 2.13: dynamo cannot trace it.
- attention with full attention (window=None) reads the position held in the state to
  check it against max_len: a data-dependent branch by design (the sliding window reads
  nothing and compiles).
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "conformance"))
from test_conformance import _perturb_, inputs  # noqa: E402

import rnnzoo  # noqa: E402

# (layer, options over its tiny config): diagonal, matrix (gla: its chunk op reads decay
# spans with .item() in eager, not while compiling), one per family in the slow tier
FAST = [("mingru", {}), ("retnet", {}), ("gla", {})]
SLOW = [("gru", {}), ("sru", {}), ("s4d", {}), ("lru", {}), ("mamba", {}), ("hawk", {}),
        ("deltanet", {}), ("mlstm", {}), ("rwkv7", {}), ("attention", {"window": 4})]


def _compare(name, options, backend):
    torch._dynamo.reset()
    info = rnnzoo.registry.get_layer_info(name)
    options = {**info.tiny, **options}
    d_model = options.pop("d_model", 8)
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=d_model, **options)
    _perturb_(layer, 0)
    x = inputs(layer, dtype=torch.float32)
    mode = layer.auto_mode(x)
    assert mode != layer.reference_mode or len(layer.modes) == 1, mode

    def run(f):
        xi = x.clone().requires_grad_()
        y = f(xi)
        grads = torch.autograd.grad(y.square().sum(), [xi, *layer.parameters()])
        return y, grads

    def eager(xi):
        return layer(xi, mode=mode)[0]

    compiled = torch.compile(eager, fullgraph=True, backend=backend)
    y, g = run(compiled)
    y_ref, g_ref = run(eager)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name, options", FAST, ids=[n for n, _ in FAST])
def test_parallel_mode_traces_whole_and_matches_eager(name, options):
    _compare(name, options, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name, options", SLOW, ids=[n for n, _ in SLOW])
def test_parallel_mode_traces_whole_and_matches_eager_slow(name, options):
    _compare(name, options, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name, options", FAST + SLOW, ids=[n for n, _ in FAST + SLOW])
def test_parallel_mode_compiles_and_matches_eager(name, options):
    _compare(name, options, "inductor")
