"""Every diagonal layer runs T = 65536 in float32 without NaN or overflow (forward, no grad,
tiny widths, each parallel mode)."""

import pytest
import torch

import rnnzoo

T = 65536
CASES = [(i.name, m, {}) for i in rnnzoo.list_layers("diagonal") for m in i.modes[1:]]
CASES += [("s5", "scan", dict(bidirectional=True)), ("mamba", "scan", dict(allow_neg_eigval=True))]


@pytest.mark.parametrize("name,mode,options", CASES)
def test_long_sequence_is_finite(name, mode, options):
    torch.manual_seed(0)
    tiny = dict(rnnzoo.registry.get_layer_info(name).tiny)
    d_model = tiny.pop("d_model", 4)
    tiny.pop("chunk_size", None)  # the default chunking, as used at this length
    layer = rnnzoo.create(name, d_model=d_model, **{**tiny, **options})
    x = 3 * torch.randn(1, T, d_model)
    with torch.no_grad():
        y, state = layer(x, mode=mode)
    assert torch.isfinite(y).all()
    assert y.abs().max() < 1e4
    for s in state if isinstance(state, tuple) else (state,):
        assert torch.isfinite(torch.view_as_real(s) if s.is_complex() else s).all()
