"""The hand-built parity head shared by the delta-rule layers' tests (Grazzi et al. 2025,
arXiv:2411.12537): with beta in (0, 2) one head flips its state's sign at every 1-bit."""

import torch


def bit_sequences(B=4, T=50, seed=0):
    """x (B, T + 1, 3) float64: a BOS step, then one bit per step in channel 0 and a constant
    1 in channel 1; and the bits (B, T)."""
    bits = torch.randint(0, 2, (B, T), generator=torch.Generator().manual_seed(seed)).double()
    x = torch.zeros(B, T + 1, 3, dtype=torch.float64)
    x[:, 0, 2] = 1.0                       # BOS
    x[:, 1:, 0] = bits
    x[:, :, 1] = 1.0
    return x, bits


def assert_tracks_parity(layer):
    """sign(y_t) = (-1)^(bits so far) in every mode and in step, with |y_t| near 1."""
    x, bits = bit_sequences()
    parity_sign = 1 - 2 * (bits.cumsum(1) % 2)
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        assert torch.equal(torch.sign(y[:, 1:, 0]), parity_sign)
        assert (y[:, 1:, 0].abs() > 0.99).all()
    state, ys = None, []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert torch.equal(torch.sign(torch.stack(ys, 1)[:, 1:, 0]), parity_sign)


def assert_sign_never_flips(layer):
    """Eigenvalues 1 - beta >= 0: the state never changes sign, in every mode."""
    x, _ = bit_sequences()
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        assert (y[..., 0] >= 0).all()
