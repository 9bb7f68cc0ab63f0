"""Mamba-3 (arXiv:2603.15569) against mamba_ssm 2.3.2's Mamba3 with the same weights: its SISO
Triton kernels (interpreted on CPU, benchmarks/peers/mamba3_ssm.py) and its per-step PyTorch
references (SISO and MIMO); the data-dependent rotation computes parity by hand, and
trained (slow) where real-valued Mamba-2 does not."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch
from _parity_head import assert_sign_never_flips, assert_tracks_parity

import rnnzoo
from rnnzoo.layers.rotary import turn

CONFIGS = {
    "siso": dict(),
    "siso_outproj_norm_full_rope": dict(is_outproj_norm=True, rope_fraction=1.0),
    "mimo": dict(is_mimo=True, mimo_rank=2),
    "mimo_outproj_norm_groups": dict(is_mimo=True, mimo_rank=3, is_outproj_norm=True,
                                     n_groups=2),
}


def peers():
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.importorskip("mamba_ssm", reason="mamba-ssm 2.3.2.post1 (.ci/install-peers, "
                                                "no CUDA build) holds the Mamba-3 oracle")
    pytest.importorskip("einops", reason="mamba_ssm's Mamba3 needs einops")
    pytest.importorskip("triton", reason="mamba_ssm's Mamba3 imports triton")
    from peers import mamba3_ssm
    return mamba3_ssm


def layer_for(options, seed=0):
    torch.manual_seed(seed)
    layer = rnnzoo.create("mamba3", d_model=8, d_state=8, head_dim=8, chunk_size=4, **options)
    with torch.no_grad():  # away from the initial values (biases 1, mimo weights 1/R, ...)
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer


def close(a, b, tol=2e-6):
    return (a - b).abs().max() <= tol * b.abs().max()


@pytest.mark.parametrize("config", CONFIGS)
def test_equals_mamba_ssm_step_references(config):
    """mamba_ssm's Mamba3.step with its CuTe and rotary kernels replaced by the package's
    PyTorch references, run T steps: every mode, our step, and the final states (theirs turned
    back by their running angle: ours are in the unrotated frame)."""
    m3 = peers()
    layer = layer_for(CONFIGS[config])
    peer = m3.peer_of(layer)
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        want, (angle, ssm, k, v) = m3.peer_decode(peer, x)
        for mode in layer.modes:
            y, (h, B_prev, x_prev) = layer(x, mode=mode)
            assert close(y, want), mode
            theta = torch.nn.functional.pad(angle, (0, layer.d_state // 2 - angle.shape[-1]))
            assert close(h, turn(ssm, -theta[:, :, None], layer.pairs).transpose(-1, -2))
            assert close(B_prev, turn(k, -theta[:, None], layer.pairs))
            assert close(x_prev, v)
        state, ys = None, []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
        assert close(torch.stack(ys, 1), want)


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not INTERPRETED, reason="run by test_kernels_in_a_child")
def test_siso_equals_mamba_ssm_triton_kernels():
    """mamba_ssm's Mamba3.forward (SISO Triton kernels: angle cumsum, chunked trapezoidal SSD)
    on CPU under TRITON_INTERPRET=1, exact cos/sin/tanh in place of its PTX approximations."""
    m3 = peers()
    for config in ("siso", "siso_outproj_norm_full_rope"):
        layer = layer_for(CONFIGS[config])
        peer = m3.peer_of(layer)
        x = torch.randn(2, 11, 8)  # 11: a partial last chunk of 4
        with torch.no_grad():
            want = peer(x)
            for mode in layer.modes:
                assert close(layer(x, mode=mode)[0], want), (config, mode)


def _kernels_in_a_child():
    """Outside an interpreted process, the kernel test above runs in a child that has one."""
    ops = Path(__file__).parents[1] / "ops"
    spec = importlib.util.spec_from_file_location("_triton_interp", ops / "_triton_interp.py")
    interp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(interp)
    interp.rerun_in_child(f"{__file__}::test_siso_equals_mamba_ssm_triton_kernels")()


if not INTERPRETED:  # `make test` interprets in this process: no child needed
    test_kernels_in_a_child = _kernels_in_a_child


def test_packed_sequences_and_split_calls():
    """Two calls carrying the state equal one call (the trapezoid's previous input crosses
    the boundary), and a right-padded batch equals each sequence alone."""
    layer = layer_for(CONFIGS["mimo"]).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    with torch.no_grad():
        y, s = layer(x, mode="chunk")
        y1, s1 = layer(x[:, :6], mode="chunk")
        y2, s2 = layer(x[:, 6:], s1, mode="sequential")
        assert (torch.cat([y1, y2], 1) - y).abs().max() < 1e-12
        assert all((a - b).abs().max() < 1e-12 for a, b in zip(s, s2))


def parity_mamba3(rotate: bool):
    """One head, d_state 2 (one rotated pair), inputs (bit, 1, bos): B = C = (1, 0) (biases),
    x = bos, dt = 1, no decay (A_floor 1e-9), lam = 1 (Euler), angle step pi tanh(40 bit) dt:
    pi for a 1-bit, 0 for a 0-bit. The state written at BOS turns by pi at every 1-bit, so
    y_t = C . R(-pi n) B = (-1)^n; without the angle it never changes sign."""
    layer = rnnzoo.create("mamba3", d_model=3, d_state=2, head_dim=3, expand=1,
                          rope_fraction=1.0, A_floor=1e-9, chunk_size=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        W = layer.in_proj.weight  # rows: z (3), x (3), B (2), C (2), dt, A, lam, angle
        W[0, 1] = 40.0             # z_0 = 40: silu(z) ~ 40
        W[3, 2] = 1.0              # x_0 = bos
        W[11, 1] = -1e4            # A = -softplus(-1e4) -> -A_floor
        W[12, 1] = 40.0            # lam = sigmoid(40) = 1
        W[13, 0] = 40.0 if rotate else 0.0
        layer.dt_bias.fill_(math.log(math.e - 1))  # softplus^-1(1)
        layer.B_bias[0, 0, 0] = layer.C_bias[0, 0, 0] = 1.0
        layer.out_proj.weight[0, 0] = 1 / 40
    return layer


def test_rotation_computes_parity_by_hand():
    """The complex (rotary) transition flips the read-out at every 1-bit, in every mode and in
    step: sign(y_t) = (-1)^(bits so far) (the paper's state-tracking claim)."""
    assert_tracks_parity(parity_mamba3(rotate=True))


def test_without_the_rotation_the_sign_never_flips():
    """The same head with its angle weight zeroed is real-valued (Mamba-2's transition)."""
    assert_sign_never_flips(parity_mamba3(rotate=False))


def test_options_checked():
    with pytest.raises(ValueError, match="rope_fraction must be one of"):
        rnnzoo.create("mamba3", d_model=8, rope_fraction=0.25)
    with pytest.raises(ValueError, match="rope_fraction \\* d_state must be at least 2"):
        rnnzoo.create("mamba3", d_model=8, head_dim=8, d_state=2, rope_fraction=0.5)
    with pytest.raises(ValueError, match="multiple of n_groups"):
        rnnzoo.create("mamba3", d_model=8, head_dim=8, n_groups=3)
    with pytest.raises(TypeError, match="is_mimo must be a bool"):
        rnnzoo.create("mamba3", d_model=8, is_mimo=1)


@pytest.mark.slow
def test_trained_mamba3_tracks_parity_where_mamba2_does_not():
    """Parity trained on lengths 3-40, tested at 40 and 64, 2 layers, d_model 64 (as
    tests/tasks/test_facts.py): Mamba-3's rotations fit it at the training length 40;
    Mamba-2 (transitions in (0, 1)) stays near chance there. Neither is asked to
    length-generalise to 64."""
    from rnnzoo.train import TrainConfig, train

    common = dict(task="parity", task_options=dict(train_lengths=(3, 40), test_lengths=(40, 64)),
                  d_model=64, num_layers=2, batch_size=32, lr=3e-3, steps=1000,
                  eval_every=100, eval_batches=16, log_every=100, target=0.95, threads=1,
                  layer_options=dict(d_state=16, head_dim=16, chunk_size=16))
    m3 = train(TrainConfig(layer="mamba3", **common))
    print("parity mamba3", m3["value"], m3["eval"], m3["steps"], m3["seconds"])
    m2 = train(TrainConfig(layer="mamba2", **common))
    print("parity mamba2", m2["value"], m2["eval"], m2["steps"], m2["seconds"])
    assert m3["eval"]["40"]["scaled_acc"] >= 0.9
    assert abs(m2["eval"]["40"]["scaled_acc"]) < 0.2
