"""Generalized teacher forcing (Hess et al. 2023) for the piecewise-linear RNNs: alpha = 1 is
teacher forcing of the observed units, alpha = 0 the free run, in between the forced state
alpha x_t + (1 - alpha) z_t; the bound alpha* from the Jacobians; the annealing rule."""

import pytest
import torch

from rnnzoo.cells.piecewise_linear import (
    ALRNN,
    PLRNN,
    free_run,
    gtf_alpha_bound,
    gtf_anneal,
    gtf_rollout,
)

F64 = torch.float64


def cell(kind=ALRNN, M=6, seed=0):
    torch.manual_seed(seed)
    c = (kind(1, M, num_relu=3) if kind is ALRNN else kind(1, M)).double()
    with torch.no_grad():
        c.h.normal_()
    return c


def step(c, z):
    """z_{t+1} = A z + W_offdiag Phi*(z) + h, written out."""
    W = c.W * (1 - torch.eye(c.hidden_size, dtype=F64))
    return c.A * z + c.phi(z) @ W.T + c.h


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_rollout_forces_the_observed_units(alpha):
    c = cell()
    x = torch.randn(2, 7, 3, dtype=F64)
    pred, forced = gtf_rollout(c, x, alpha)
    z = torch.cat([x[:, 0], torch.zeros(2, 3, dtype=F64)], -1)
    for t in range(6):
        if t:
            z = torch.cat([alpha * x[:, t] + (1 - alpha) * z[:, :3], z[:, 3:]], -1)
        assert (forced[:, t] - z).abs().max() < 1e-13
        z = step(c, z)
        assert (pred[:, t] - z[:, :3]).abs().max() < 1e-13


def test_alpha_zero_is_the_free_run_and_one_reads_the_data():
    c = cell(PLRNN)
    x = torch.randn(2, 9, 3, dtype=F64)
    pred, _ = gtf_rollout(c, x, 0.0)
    z0 = torch.cat([x[:, 0], torch.zeros(2, 3, dtype=F64)], -1)
    assert (pred - free_run(c, z0, 8)[..., :3]).abs().max() < 1e-13
    _, forced = gtf_rollout(c, x, 1.0)
    assert torch.equal(forced[..., :3], x[:, :-1])


def test_alpha_bound_from_the_jacobians():
    c = cell()
    z = torch.randn(5, 6, dtype=F64) * 2
    norms = torch.stack([torch.linalg.matrix_norm(torch.autograd.functional.jacobian(
        lambda v: step(c, v), zi), ord=2) for zi in z])
    G = norms.log().mean().exp()
    assert abs(gtf_alpha_bound(c, z) - max(0.0, 1 - 1 / float(G))) < 1e-12
    with torch.no_grad():  # a contracting map needs no forcing
        c.A.fill_(0.1)
        c.W.mul_(0.01)
    assert gtf_alpha_bound(c, z) == 0.0


def test_annealing_decays_to_the_bound():
    a = 1.0
    for _ in range(2000):
        a = gtf_anneal(a, 0.25, gamma=0.99)
    assert a == 0.25
    assert gtf_anneal(0.8, 0.1, 0.9) == pytest.approx(0.72)


# -- the dynamical-systems reconstruction model (models/dsr.py) and `rnnzoo train --model dsr`

def dsr(alpha=0.3, anneal=0, gamma=0.9, M=6):
    from rnnzoo.models.dsr import DSRConfig, DSRModel
    torch.manual_seed(0)
    return DSRModel(DSRConfig(cell="al_rnn", observation_dim=3, latent_size=M,
                              cell_options={"num_relu": 3}, alpha=alpha, anneal=anneal,
                              gamma=gamma)).double()


def test_dsr_forward_is_the_forced_rollout_and_eval_forces_fully():
    m = dsr(alpha=0.3)
    x = torch.randn(2, 7, 3, dtype=F64)
    ext = torch.cat([x, torch.zeros(2, 1, 3, dtype=F64)], 1)
    for alpha, mode in ((0.3, True), (1.0, False)):
        m.train(mode)
        pred, (zT,) = m(x)
        ref, forced = gtf_rollout(m.cell, ext, alpha)
        assert pred.shape == (2, 7, 3) and (pred - ref).abs().max() < 1e-13
        assert (zT - step(m.cell, forced[:, -1])).abs().max() < 1e-13
    z0 = torch.cat([x[:, 0], torch.zeros(2, 3, dtype=F64)], -1)
    assert (m.generate(x[:, 0], 9) - free_run(m.cell, z0, 9)[..., :3]).abs().max() < 1e-13
    with pytest.raises(ValueError, match=r"\(B, T, 3\)"):
        m(torch.randn(2, 7, 4, dtype=F64))


def test_dsr_anneals_alpha_every_n_steps_to_the_bound():
    m = dsr(alpha=0.8, anneal=2, gamma=0.9)
    x = torch.randn(4, 12, 3, dtype=F64)
    m.train()
    expected = 0.8
    for s in range(1, 7):
        _, forced = gtf_rollout(m.cell, torch.cat([x, x[:, :1]], 1), float(m.alpha))
        m(x)
        if s % 2 == 0:
            expected = max(0.9 * expected, gtf_alpha_bound(m.cell, forced))
        m.after_step(s)
        assert float(m.alpha) == pytest.approx(expected)
    assert float(m.alpha) < 0.8
    fixed = dsr(alpha=0.8, anneal=0)
    fixed.train()
    fixed(x)
    fixed.after_step(2)
    assert float(fixed.alpha) == 0.8


def test_train_dsr_runs_resumes_with_its_alpha_and_reports_the_geometry(tmp_path):
    from rnnzoo.train.config import TrainConfig
    from rnnzoo.train.loop import train
    kw = dict(task="lorenz63", layer="al_rnn", model="dsr", d_model=8,
              layer_options={"num_relu": 2}, steps=6, batch_size=4, gtf_alpha=0.5,
              gtf_anneal=1, gtf_gamma=0.9, eval_every=3, log_every=3, threads=1,
              task_options={"series_length": 1500, "train_length": 20})
    whole = train(TrainConfig(**kw, out=str(tmp_path / "a")), quiet=True)
    train(TrainConfig(**kw, out=str(tmp_path / "b")), stop_at=3, quiet=True)
    again = train(TrainConfig(**kw, out=str(tmp_path / "b")), resume=True, quiet=True)
    assert again["value"] == whole["value"]  # alpha (a buffer) came back with the checkpoint
    from rnnzoo.models.dsr import load_dsr
    a, b = load_dsr(tmp_path / "a"), load_dsr(tmp_path / "b")
    assert float(a.alpha) < 0.5 and a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    rec = whole["reconstruction"]
    assert set(rec) == {"dstsp", "dstsp_binned", "dh"} and 0 <= rec["dh"] <= 1


def test_cli_trains_a_dsr_model_and_prints_its_free_run(tmp_path, capsys):
    from rnnzoo.cli import main
    code = main(["train", "--task", "lorenz63", "--model", "dsr", "--layer", "plrnn",
                 "--d-model", "5", "--gtf-alpha", "0.2", "--gtf-anneal", "1", "--steps", "2",
                 "--batch-size", "2", "--task-option", "series_length=600",
                 "--task-option", "train_length=10", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "free run vs the test part: D_stsp" in out, out
    config = (tmp_path / "r" / "train_config.json").read_text()
    assert '"model": "dsr"' in config and '"gtf_alpha": 0.2' in config


@pytest.mark.parametrize("argv,message", [
    (["--layer", "lstm", "--model", "dsr"], "--model dsr runs a latent al_rnn or plrnn"),
    (["--layer", "al_rnn", "--model", "dynamics"], "--model must be stack or dsr"),
    (["--layer", "al_rnn", "--gtf-alpha", "0.5"], "--gtf-alpha needs --model dsr"),
    (["--layer", "al_rnn", "--model", "dsr", "--gtf-alpha", "1.5"], "--gtf-alpha must lie in"),
    (["--layer", "al_rnn", "--model", "dsr", "--gtf-gamma", "0"], "--gtf-gamma must lie in"),
    (["--layer", "al_rnn", "--model", "dsr", "--task", "parity"], "does not predict its own"),
    (["--layer", "plrnn", "--model", "dsr", "--layer-option", "num_relu=2"],
     "bad option for cell 'plrnn'"),
    (["--layer", "al_rnn", "--model", "dsr", "--layer-option", "num_relu=9", "--d-model", "4"],
     "num_relu must be an int in [0, 4]"),
    (["--layer", "al_rnn", "--model", "dsr", "--d-model", "2"], "latent_size (2) must be at"),
])
def test_bad_dsr_options_are_one_line_exit_2(tmp_path, capsys, argv, message):
    from rnnzoo.cli import main
    if "--task" not in argv:
        argv = argv + ["--task", "lorenz63", "--task-option", "series_length=1200"]
    code = main(["train", *argv, "--steps", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


# The fact (Hess et al. 2023): on Lorenz-63, an AL-RNN trained with generalized teacher forcing
# runs free on the attractor; the same model trained with teacher forcing (alpha = 1) does not.
# Settings: dt 0.01, windows of 50 states, M = 20 latent units of which P = 6 are ReLU, alpha
# 0.1, AdamW lr 5e-3 (warm-up, cosine) without weight decay, clip 10, batch 16, 800 steps.
# D_stsp: Gaussian (sigma 1, z-scored units) of the free run (4000 states after 1000 of
# transient) against the test part; another orbit of the true system: 0.013, D_H 0.19; a fixed
# point at the mean: 0.51. Measured (seed 0): TF D_stsp 0.476, D_H 0.789; GTF D_stsp 0.032,
# D_H 0.247 (seed 1: TF 0.408, GTF 0.090); docs/dynamics.md has the settings that did not
# separate them.
DSTSP_BOUND = 0.1

FACT = dict(task="lorenz63", layer="al_rnn", model="dsr", d_model=20,
            layer_options={"num_relu": 6}, steps=800, batch_size=16, lr=5e-3, weight_decay=0.0,
            grad_clip=10.0, eval_every=800, log_every=800, threads=1,
            task_options={"train_length": 50})


@pytest.mark.slow
def test_gtf_keeps_the_lorenz_attractor_where_teacher_forcing_does_not():
    from rnnzoo.train.config import TrainConfig
    from rnnzoo.train.loop import train
    tf = train(TrainConfig(**FACT, gtf_alpha=1.0), quiet=True)["reconstruction"]
    gtf = train(TrainConfig(**FACT, gtf_alpha=0.1), quiet=True)["reconstruction"]
    print("TF", tf, "GTF", gtf)
    assert gtf["dstsp"] < DSTSP_BOUND < tf["dstsp"]
    assert gtf["dh"] < tf["dh"]
