"""pLSTM on the grid: its parallel forms against the loop, its P-mode routing and D-mode
averaging on hand-set gates, the grid DAG's tiling through the state, dtypes, devices,
errors; and (slow) the arrow-pointing extrapolation on a short trained run."""

from __future__ import annotations

import math

import pytest
import torch

from rnnzoo.grid import create_grid
from rnnzoo.grid.dag import grid_dag
from rnnzoo.grid.plstm import plstm2d, stm_gates


def random_state(layer, B, X, Y):
    return tuple(torch.randn_like(s) for s in layer.init_state(B, X, Y, dtype=torch.float64))


@pytest.mark.parametrize("propagation", ["P", "D"])
@pytest.mark.parametrize("orientations", [1, 4])
def test_parallel_modes_equal_the_loop(propagation, orientations):
    torch.manual_seed(0)
    layer = create_grid("plstm", 6, num_heads=2, propagation=propagation,
                        orientations=orientations).double()
    with torch.no_grad():
        layer.gates.weight.normal_()            # gates that vary from cell to cell
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    state = random_state(layer, 2, 3, 5)
    ref_y, ref_s = layer(x, state, mode="sequential")
    ref_g = torch.autograd.grad(ref_y.square().sum(), [x, *layer.parameters()])
    for mode in ("wavefront", "doubling"):
        y, s = layer(x, state, mode=mode)
        torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-12)
        for a, b in zip(s, ref_s):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        g = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        for a, b in zip(g, ref_g):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert layer.auto_mode(x) == "wavefront"


@pytest.mark.parametrize("mode", ["sequential", "wavefront", "doubling"])
def test_p_mode_routes_a_source_without_loss(mode):
    """P-mode, decay 1, orientation 1/2 everywhere: a unit source at (0, 0) reaches the
    cells of anti-diagonal s with the binomial weights C(s, i) / 2^s (a random walk), and
    each anti-diagonal's weights sum to 1 at every distance. Unnormalised transitions
    (all ones) would give C(s, i), 2^s in all."""
    X = Y = 9
    half = torch.full((1, X, Y), 0.0, dtype=torch.float64)      # logit 0: o = 1/2
    big = torch.full((1, X, Y), 60.0, dtype=torch.float64)      # sigmoid = 1 in float64
    g = {"orientation": half, "transition": big, "source": big, "mark": big, "direct": -big}
    T, S, M, D = stm_gates(g, "P")
    S = S * torch.zeros(1, X, Y, 1, dtype=torch.float64).index_fill_(1, torch.tensor([0]), 1) \
        .index_fill_(2, torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]), 0)      # the source at (0,0) only
    one = torch.ones(1, X, Y, 1, dtype=torch.float64)
    zero0 = torch.zeros(1, X, 1, 1, dtype=torch.float64)
    y, _, _ = plstm2d(one, one, one, T, S, M, D, zero0, zero0.clone()[:, :Y], mode)
    y = y[0, :, :, 0]
    for s in range(1, X):
        cells = [(i, s - i) for i in range(s + 1)]
        got = torch.stack([y[i, j] for i, j in cells])
        want = torch.tensor([math.comb(s, i) / 2 ** s for i, _ in cells], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert abs(float(got.sum()) - 1) < 1e-12
    # orientation 1 everywhere: straight to the right, undiminished over the whole row
    g["orientation"] = big
    T, S1, M, D = stm_gates(g, "P")
    S1 = S1 * (torch.arange(Y) == 0).reshape(1, 1, Y, 1)
    y, right, _ = plstm2d(one, one, one, T, S1, M, D, zero0, zero0.clone()[:, :Y], mode)
    assert torch.equal(y[0, :, 1:, 0], torch.ones(X, Y - 1, dtype=torch.float64))
    assert torch.equal(right[:, :, 0, 0], torch.ones(1, X, dtype=torch.float64))


def test_d_mode_averages():
    """D-mode, decay 1, no sources: each outgoing state is a weighted mean of the incoming
    ones, so borders that all hold C0 give C0 on every edge, whatever the mixing weights."""
    torch.manual_seed(1)
    X, Y, K = 5, 7, 2
    big = torch.full((1, X, Y), 60.0, dtype=torch.float64)
    g = {"decay_r": big, "decay_d": big, "mix_r": torch.randn(1, X, Y, dtype=torch.float64),
         "mix_d": torch.randn(1, X, Y, dtype=torch.float64), "source_r": -big,
         "source_d": -big, "mark_l": torch.randn(1, X, Y, dtype=torch.float64),
         "mark_u": torch.randn(1, X, Y, dtype=torch.float64), "direct": -big}
    T, S, M, D = stm_gates(g, "D")
    torch.testing.assert_close(T.sum(-1), torch.ones(1, X, Y, 2, dtype=torch.float64))
    C0 = torch.randn(K, K, dtype=torch.float64)
    for mode in ("sequential", "wavefront", "doubling"):
        L, U, right, bottom = grid_dag(T[..., None, None], torch.zeros(1, X, Y, 2, K, K,
                                       dtype=torch.float64), C0.expand(1, X, K, K),
                                       C0.expand(1, Y, K, K), mode)
        for t in (L, U, right, bottom):
            torch.testing.assert_close(t, C0.expand_as(t), rtol=0, atol=1e-12)


def test_state_tiles_the_grid():
    """One orientation: the left half then the right half from its right border (and a
    zero top) equals the whole grid; the top half then the bottom half likewise."""
    torch.manual_seed(2)
    layer = create_grid("plstm", 4, num_heads=2, orientations=1).double()
    x = torch.randn(2, 4, 6, 4, dtype=torch.float64)
    y, (right, bottom) = layer(x, mode="sequential")
    y1, (r1, b1) = layer(x[:, :, :2])
    y2, (r2, b2) = layer(x[:, :, 2:], (r1, torch.zeros_like(bottom)[:, :, :, 2:]))
    torch.testing.assert_close(torch.cat([y1, y2], 2), y)
    torch.testing.assert_close(r2, right)
    torch.testing.assert_close(torch.cat([b1, b2], 3), bottom)
    y1, (r1, b1) = layer(x[:, :3])
    y2, _ = layer(x[:, 3:], (torch.zeros_like(right)[:, :, :, 3:], b1))
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)


def test_states_accumulate_in_float32_and_follow_the_input_device():
    layer = create_grid("plstm", 4, num_heads=2).to(torch.bfloat16)
    y, state = layer(torch.randn(1, 3, 3, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state)
    y, state = create_grid("plstm", 4).double()(torch.randn(1, 2, 2, 4, dtype=torch.float64))
    assert all(s.dtype == torch.float64 for s in state)
    meta = create_grid("plstm", 4, num_heads=2).to("meta")
    for mode in ("sequential", "wavefront", "doubling"):
        y, state = meta(torch.empty(1, 3, 4, 4, device="meta"), mode=mode)
        assert y.device.type == "meta" and all(s.device.type == "meta" for s in state)


def test_bad_input_is_one_clear_line():
    layer = create_grid("plstm", 4, num_heads=2)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, height, width, "
                       r"d_model=4\), got shape \(1, 9, 4\)"):
        layer(torch.randn(1, 9, 4))
    with pytest.raises(ValueError, match="height and width >= 1"):
        layer(torch.randn(1, 0, 3, 4))
    with pytest.raises(ValueError, match=r"state must be \(left, top\) of shapes"):
        layer(torch.randn(1, 2, 3, 4), state=(torch.zeros(1, 4, 2, 2, 2, 2),) * 2)
    with pytest.raises(ValueError, match="propagation must be one of"):
        create_grid("plstm", 4, propagation="Q")
    with pytest.raises(ValueError, match="orientations must be one of"):
        create_grid("plstm", 4, orientations=2)
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide d_model \(4\)"):
        create_grid("plstm", 4, num_heads=3)
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(1, 2, 2, 4, dtype=torch.float64))


# -- the arrow-pointing extrapolation (slow) ---------------------------------------------------

class GridClassifier(torch.nn.Module):
    """Tokens (B, side^2) -> per-position logits; the last position holds the image's class
    (mean over the grid after the 2-D layers)."""

    def __init__(self, vocab, classes, d_model, make, depth=2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d_model)
        self.layers = torch.nn.ModuleList([make() for _ in range(depth)])
        self.norms = torch.nn.ModuleList([torch.nn.LayerNorm(d_model) for _ in range(depth)])
        self.head = torch.nn.Linear(d_model, classes)

    def forward(self, tokens):
        B, T = tokens.shape
        side = math.isqrt(T)
        h = self.embed(tokens).reshape(B, side, side, -1)
        for layer, norm in zip(self.layers, self.norms):
            h = h + layer(norm(h))[0]
        logits = self.head(h.mean((1, 2)))
        return logits[:, None].expand(B, T, -1)


def arrow_run(steps=400, log=None):
    """Train GridClassifier(plstm, P-mode, one layer) on 8x8 arrows; accuracy by side."""
    import numpy as np

    from rnnzoo.tasks import get_task

    torch.manual_seed(0)
    task = get_task("arrow", train_sides=(8, 8), test_sides=(8, 12))
    model = GridClassifier(task.vocab_size, task.output_dim, 16,
                           lambda: create_grid("plstm", 16, num_heads=4, propagation="P"),
                           depth=1)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    rng = np.random.default_rng(0)

    def accuracy():
        acc = {}
        with torch.no_grad():
            for length in task.test_lengths:
                b = task.sample(np.random.default_rng(1), 256, length=length, split="test")
                acc[math.isqrt(length)] = task.summarize(task.score(model(b.inputs), b))["acc"]
        return acc

    for step in range(1, steps + 1):
        b = task.sample(rng, 32)
        loss, n = task.loss(model(b.inputs), b)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        if log and step % 50 == 0:
            log(step, float(loss.detach() / n), accuracy())
    return accuracy()


@pytest.mark.slow
def test_arrow_pointing_extrapolation():
    """Trained on 8x8 arrows only (400 steps of 32), plstm (P-mode, one layer, d_model 16)
    answers at 8x8 and at the unseen 12x12 well above chance (0.5). Measured: 0.980 at 8x8,
    0.844 at 12x12 (256 test images each; docs/2d.md)."""
    acc = arrow_run(log=lambda *a: print("step, loss, accuracy by side:", *a))
    print("arrow accuracy by side:", acc)
    assert acc[8] > 0.9 and acc[12] > 0.7
