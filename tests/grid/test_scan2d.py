"""scan2d: each direction is the 1-D layer run by hand on the grid read in that order; the
merges; a sample of layers from every family; the receptive field each direction set gives."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.grid import create_grid
from rnnzoo.registry import LAYERS

SAMPLE = ["lstm", "mingru", "mamba", "gla", "deltanet", "attention"]   # one or two a family
ALL = ("row", "row_rev", "col", "col_rev")


def by_hand_order(direction, H, W):
    """The cells in the order the direction reads them, written out cell by cell."""
    if direction.startswith("row"):
        cells = [(i, j) for i in range(H) for j in range(W)]
    else:
        cells = [(i, j) for j in range(W) for i in range(H)]
    return cells[::-1] if direction.endswith("rev") else cells


def run_by_hand(layer1d, x, direction):
    B, H, W, D = x.shape
    cells = by_hand_order(direction, H, W)
    seq = torch.stack([x[:, i, j] for i, j in cells], 1)
    y_seq, state = layer1d(seq, mode="sequential")
    y = torch.zeros_like(x)
    for t, (i, j) in enumerate(cells):
        y[:, i, j] = y_seq[:, t]
    return y, state


def test_the_sample_covers_every_family():
    assert {LAYERS[n].family for n in SAMPLE} == {"classic", "diagonal", "matrix", "attention"}


@pytest.mark.parametrize("name", SAMPLE)
def test_each_direction_is_the_1d_layer_on_the_permuted_sequence(name):
    tiny = dict(LAYERS[name].tiny)
    d = tiny.pop("d_model")
    torch.manual_seed(0)
    layer = create_grid("scan2d", d, layer=name, directions=ALL, merge="sum", **tiny).double()
    x = torch.randn(2, 3, 4, d, dtype=torch.float64)
    y, states = layer(x, mode="sequential")
    want = 0
    for k, direction in enumerate(ALL):
        yd, sd = run_by_hand(layer.layer_for(k), x, direction)
        want = want + yd
        for a, b in zip(sd if isinstance(sd, tuple) else (sd,),
                        states[k] if isinstance(states[k], tuple) else (states[k],)):
            torch.testing.assert_close(b, a)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)
    mode = LAYERS[name].modes[1]            # the 1-D layer's modes pass through
    torch.testing.assert_close(layer(x, mode=mode)[0], y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("merge", ["sum", "mean", "concat"])
def test_merges(merge):
    torch.manual_seed(1)
    layer = create_grid("scan2d", 4, layer="gla", directions=("row", "col_rev"), merge=merge,
                        num_heads=2, chunk_size=4, subchunk_size=2, decay_rank=4).double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    ys = [run_by_hand(layer.layer_for(k), x, d)[0] for k, d in enumerate(("row", "col_rev"))]
    want = {"sum": ys[0] + ys[1], "mean": (ys[0] + ys[1]) / 2,
            "concat": torch.cat(ys, -1) @ layer.proj.weight.T if layer.proj is not None else None}
    torch.testing.assert_close(layer(x, mode="sequential")[0], want[merge])


def test_share_uses_one_layer_in_every_direction():
    layer = create_grid("scan2d", 4, layer="mingru", directions=ALL, share=True)
    assert len(layer.layers) == 1 and all(layer.layer_for(k) is layer.layers[0] for k in range(4))
    assert len(create_grid("scan2d", 4, layer="mingru", directions=ALL).layers) == 4


def dependence(layer, x):
    """(H W, H W) bool: does output cell a depend on input cell b (Jacobian support)?"""
    B, H, W, D = x.shape
    J = torch.autograd.functional.jacobian(lambda t: layer(t)[0].sum(-1), x)
    return (J.abs().sum(-1)[0, :, :, 0] > 0).reshape(H * W, H * W)


def test_receptive_fields():
    """One row-major direction sees exactly the row-major prefix (ViR); row + row_rev
    (ViG) and column-major + reverse each see the whole grid."""
    torch.manual_seed(2)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    one = create_grid("scan2d", 4, layer="linear_attention", directions=("row",),
                      num_heads=2).double()
    assert torch.equal(dependence(one, x), torch.ones(12, 12).tril().bool())
    col = create_grid("scan2d", 4, layer="linear_attention", directions=("col",),
                      num_heads=2).double()
    order = torch.tensor([i * 4 + j for j in range(4) for i in range(3)])
    pos = torch.empty(12, dtype=torch.long)
    pos[order] = torch.arange(12)
    assert torch.equal(dependence(col, x), pos[:, None] >= pos[None, :])
    both = create_grid("scan2d", 4, layer="linear_attention", directions=("row", "row_rev"),
                       num_heads=2).double()
    assert dependence(both, x).all()


def test_state_is_one_per_direction_and_continues():
    torch.manual_seed(3)
    layer = create_grid("scan2d", 4, layer="mingru", directions=("row", "col"))
    x = torch.randn(2, 3, 4, 4)
    _, states = layer(x)
    assert len(states) == 2 and all(s.dtype == torch.float32 for s in states)
    y0 = layer(x, states)[0]          # an initial state is each 1-D layer's
    seq = x.reshape(2, 12, 4)
    y_hand = layer.layers[0](seq, states[0])[0].reshape(2, 3, 4, 4) + \
        layer.layers[1](x.transpose(1, 2).reshape(2, 12, 4), states[1])[0].reshape(
            2, 4, 3, 4).transpose(1, 2)
    torch.testing.assert_close(y0, y_hand)


def test_bad_input_is_one_clear_line():
    layer = create_grid("scan2d", 4, layer="mingru")
    with pytest.raises(ValueError, match=r"x must have shape \(batch, height, width, d_model=4\), "
                       r"got shape \(2, 3, 4\)"):
        layer(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="x must have shape .* got shape \\(2, 3, 4, 5\\)"):
        layer(torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="registered 1-D layer, got 'nope'"):
        create_grid("scan2d", 4, layer="nope")
    with pytest.raises(ValueError, match="directions entry must be one of"):
        create_grid("scan2d", 4, layer="mingru", directions=("row", "diag"))
    with pytest.raises(ValueError, match="distinct"):
        create_grid("scan2d", 4, layer="mingru", directions=("row", "row"))
    with pytest.raises(ValueError, match="state must be a tuple of 2"):
        layer(torch.randn(1, 2, 2, 4), state=(None,))
    with pytest.raises(ValueError, match="mode must be 'auto' or one of"):
        layer(torch.randn(1, 2, 2, 4), mode="chunk")


def test_meta_device():
    layer = create_grid("scan2d", 4, layer="mingru", directions=ALL).to("meta")
    y, states = layer(torch.empty(2, 3, 4, 4, device="meta"))
    assert y.device.type == "meta" and all(s.device.type == "meta" for s in states)
