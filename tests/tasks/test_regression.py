"""Sequence regression from a file (tasks/regression.py) and a user's own task registered
from Python, as the tasks package docstring shows."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import rnnzoo.tasks
from rnnzoo.tasks import TASKS, get_task, list_tasks, task_options
from rnnzoo.train import TrainConfig, train


def adding_problem(n, T, seed=0):
    """Hochreiter & Schmidhuber's adding problem: values in [0, 1], two marked; the
    target is the sum of the marked values."""
    g = np.random.default_rng(seed)
    values = g.uniform(size=(n, T))
    marks = np.zeros((n, T))
    for row in marks:
        row[g.choice(T, 2, replace=False)] = 1
    return np.stack([values, marks], -1), (values * marks).sum(1)


def test_regress_reads_the_adding_problem_and_scores_in_its_units(tmp_path):
    x, y = adding_problem(200, 15)
    np.savez(tmp_path / "adding.npz", x=x, y=y)
    task = get_task("regress", path=tmp_path / "adding.npz", test_fraction=0.25)
    assert task.kind == "regress" and task.metric == "mse" and not task.higher_is_better
    assert task.input_dim == 2 and task.output_dim == 1 and task.train_lengths == (15, 15)
    b = task.sample(np.random.default_rng(0), 8, split="test")
    assert b.inputs.shape == (8, 15, 2) and b.targets.shape == (8, 15, 1)
    assert b.mask[:, -1].all() and b.mask.sum() == 8
    batches = list(task.test_batches(16))
    assert sum(len(q.inputs) for q in batches) == 50
    # the test targets, back in the file's units, are those of the held-out rows
    test_y = torch.cat([q.targets[:, -1, 0] for q in batches]).numpy() * task.y_std + task.y_mean
    order = np.random.default_rng(0).permutation(200)
    np.testing.assert_allclose(test_y, y[order[:50]], atol=1e-5)
    # a perfect prediction scores 0; predicting the training mean (0 after standardising)
    # scores the test targets' mean squared deviation from it, in the targets' units
    sums = {}
    for q in batches:
        sums = {k: sums.get(k, 0) + v for k, v in task.score(q.targets.clone(), q).items()}
    assert task.summarize(sums)["mse"] < 1e-12
    zero = [task.score(torch.zeros_like(q.targets), q) for q in batches]
    mse = sum(s["se"] for s in zero) / sum(s["count"] for s in zero)
    expected = float(((y[order[:50]] - y[order[50:]].mean()) ** 2).mean())
    assert mse == pytest.approx(expected, rel=1e-4)
    assert task.baselines()["mean"]["mse"] == pytest.approx(expected, rel=1e-4)


def test_regress_vector_targets_from_csv_and_the_linear_baseline(tmp_path):
    g = np.random.default_rng(1)
    x = g.normal(size=(120, 6))
    y = np.stack([x.sum(1) * 100 + 5, x[:, 0] - x[:, -1]], 1)  # linear in the inputs
    np.savetxt(tmp_path / "r.csv", np.concatenate([x, y], 1), delimiter=",")
    task = get_task("regress", path=tmp_path / "r.csv", targets=2)
    assert task.output_dim == 2 and task.input_dim == 1
    base = task.baselines()
    assert base["linear"]["mse"] < 1e-6 * base["mean"]["mse"]
    assert "targets" in task_options("regress") and "test_path" in task_options("regress")
    with pytest.raises(ValueError, match=r"r.csv must be a table \(N, T \+ 8\) with the 8 "
                                         r"target column\(s\) last, got shape \(120, 8\)"):
        get_task("regress", path=tmp_path / "r.csv", targets=8)


def test_regress_trains_end_to_end(tmp_path):
    g = np.random.default_rng(2)
    x = g.normal(size=(300, 10))
    np.savez(tmp_path / "s.npz", x=x, y=x.mean(1) * 10)
    record = train(TrainConfig(task="regress", layer="gru", task_options=dict(
        path=str(tmp_path / "s.npz")), d_model=16, num_layers=1, steps=80, lr=1e-2,
        eval_every=80, eval_batches=2, threads=1), quiet=True)
    assert record["metric"] == "mse"
    assert record["value"] < 0.5 * record["baselines"]["mean"]["mse"]


def test_a_users_task_registers_and_trains_as_documented():
    """The example of the tasks package docstring, run as written."""
    doc = rnnzoo.tasks.__doc__
    start = doc.index("    import numpy as np")
    example = textwrap.dedent(doc[start:doc.index("\nRegression tasks", start)])
    assert "first_token" not in TASKS
    try:
        scope = {"__name__": "user_tasks"}
        exec(compile(example, "user_tasks.py", "exec"), scope)
        assert "first_token" in list_tasks() and TASKS["first_token"].family == "recall"
        task = get_task("first_token")
        b = task.sample(np.random.default_rng(0), 4, length=16, split="test")
        assert (b.targets[:, -1] == b.inputs[:, 0]).all()
        record = train(TrainConfig(task="first_token", layer="gru", d_model=8, num_layers=1,
                                   steps=4, eval_every=4, eval_batches=1, batch_size=4,
                                   threads=1), quiet=True)
        assert record["task"] == "first_token" and set(record["eval"]) == {"16", "64"}
    finally:
        if "first_token" in TASKS:
            TASKS.remove("first_token")
