"""PGN's `fft` mode: the HIE convolution by overlap-save FFT blocks, with its own backward,
equal to the direct convolution in values and gradients; a non-finite input marks only the
W + 1 outputs whose window holds it, as in the step-by-step reference."""

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.layers.pgn import fft_size, hie_fft

F64 = torch.float64


def test_fft_size_is_the_next_2_3_5_smooth_length():
    assert [fft_size(n) for n in (1, 7, 11, 127, 191, 577)] == [1, 8, 12, 128, 192, 600]


@pytest.mark.parametrize("B,T,D,H,W,block", [
    (2, 11, 3, 4, 3, 4),      # blocks not dividing T
    (2, 30, 3, 5, 7, 5),      # W - 1 > block: blocks of W - 1
    (1, 9, 2, 2, 1, 64),      # one tap, one block
    (3, 40, 4, 3, 6, 8),
])
def test_hie_fft_equals_the_direct_convolution_and_its_gradients(B, T, D, H, W, block):
    g = torch.Generator().manual_seed(B * T + W)
    xp = torch.randn(B, W + T - 1, D, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(H, D, W, generator=g, dtype=F64, requires_grad=True)
    dh = torch.randn(B, T, H, generator=g, dtype=F64)
    want = F.conv1d(xp.transpose(1, 2), w).transpose(1, 2)
    got = hie_fft(xp, w, block)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-12
    want_grads = torch.autograd.grad(want, (xp, w), dh)
    got_grads = torch.autograd.grad(got, (xp, w), dh)
    for a, b in zip(got_grads, want_grads):
        assert (a - b).abs().max() < 1e-12


def test_fft_mode_equals_conv_with_state_and_padding():
    torch.manual_seed(0)
    layer = rnnzoo.create("pgn", d_model=3, d_hidden=5, window_size=6).double()
    layer.fft_block = 4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 20, 3, generator=g, dtype=F64, requires_grad=True)
    h0 = torch.randn(3, 6, 3, generator=g, dtype=F64)
    lengths = torch.tensor([20, 3, 0])
    y_c, s_c = layer(x, h0, mode="conv", lengths=lengths)
    y_f, s_f = layer(x, h0, mode="fft", lengths=lengths)
    assert (y_c - y_f).abs().max() < 1e-12 and torch.equal(s_c, s_f)
    gc = torch.autograd.grad(y_c.sum(), [x, *layer.parameters()])
    gf = torch.autograd.grad(y_f.sum(), [x, *layer.parameters()])
    assert max((a - b).abs().max() for a, b in zip(gc, gf)) < 1e-12


def test_a_nonfinite_input_marks_only_its_window():
    """x_t non-finite: outputs t .. t + W see it (the gate reads x_t, H_{t+1..t+W} its
    window), later ones do not, in `fft` as in `sequential`."""
    torch.manual_seed(0)
    W, t = 4, 5
    layer = rnnzoo.create("pgn", d_model=3, window_size=W).double()
    x = torch.randn(1, 16, 3, dtype=F64)
    x[0, t, 1] = float("nan")
    with torch.no_grad():
        for mode in ("sequential", "fft"):
            bad = ~torch.isfinite(layer(x, mode=mode)[0][0]).all(-1)
            assert bad.nonzero().flatten().tolist() == list(range(t, t + W + 1)), mode


def test_auto_runs_fft_from_a_window_of_16():
    x = torch.zeros(1, 4, 2)
    assert rnnzoo.create("pgn", d_model=2).auto_mode(x) == "fft"                  # W = 64
    assert rnnzoo.create("pgn", d_model=2, window_size=16).auto_mode(x) == "fft"
    assert rnnzoo.create("pgn", d_model=2, window_size=8).auto_mode(x) == "conv"
