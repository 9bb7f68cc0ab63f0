"""Every generator checked against the task's definition, recomputed independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnzoo.tasks import IGNORE, TASKS, get_task, list_tasks
from rnnzoo.tasks.listops import TOKENS

GENERATED = [n for n in list_tasks() if TASKS[n].family not in ("files", "dynamics")]  # token tasks


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", GENERATED)
def test_generators_are_seeded_and_in_range(name):
    task = get_task(name)
    a, b = task.sample(rng(), 5), task.sample(rng(), 5)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert int(a.inputs.min()) >= 0 and int(a.inputs.max()) < task.vocab_size
    t = a.targets[a.targets != IGNORE]
    assert len(t) and int(t.min()) >= 0 and int(t.max()) < task.output_dim
    for key in task.test_lengths:  # attention's KV cache is sized by max_length()
        test = task.sample(rng(1), 3, length=key, split="test")
        assert test.inputs.shape[1] <= task.max_length()
    # a perfect prediction scores 1, and scaled accuracy maps chance to 0
    onehot = torch.nn.functional.one_hot(test.targets.clamp(min=0), task.output_dim).float()
    assert task.summarize(task.score(onehot, test))["acc"] == 1.0


def test_mqar_layout():
    task = get_task("mqar")  # V=256, L=64, K=4
    batch = task.sample(rng(), 16)
    x, y = batch.inputs.numpy(), batch.targets.numpy()
    assert x.shape == (16, 64)
    for row, tgt in zip(x, y):
        keys, values = row[0:8:2], row[1:8:2]
        assert (keys >= 1).all() and (keys < 128).all() and (values >= 128).all()
        assert len(set(keys)) == 4
        pos = np.nonzero(tgt != IGNORE)[0]
        assert len(pos) == 4 and (pos >= 8).all()
        for p in pos:  # the target at a query is the value its key was paired with
            assert tgt[p] == values[list(keys).index(row[p])]
        assert (np.delete(row[8:], pos - 8) == 0).all()


def test_mqar_gaps_follow_a_power_law():
    """Zoology: queries mostly close to the context (small gaps), a few far."""
    task = get_task("mqar", seq_len=256, num_pairs=4)
    y = task.sample(rng(), 400).targets.numpy()
    gaps = (np.nonzero(y != IGNORE)[1] - 8) // 2
    assert np.median(gaps) < 30 and gaps.max() > 80


def test_parity_mod_arith_and_permutations_match_their_definition():
    b = get_task("parity").sample(rng(), 8, length=50)
    assert (b.targets.numpy() == np.cumsum(b.inputs.numpy(), 1) % 2).all()
    assert b.metric_mask[:, -1].all() and b.metric_mask.sum() == 8

    task = get_task("mod_arith", modulus=7)
    b = task.sample(rng(), 6, length=21)
    ops = {7: "+", 8: "-", 9: "*"}
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        value = row[0]
        for op, d in zip(row[1::2], row[2::2]):
            value = eval(f"({value}) {ops[op]} {d}") % 7
        assert tgt[-1] == value

    task = get_task("s5")
    b = task.sample(rng(), 4, length=30)
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        state = tuple(range(5))
        for t, g in enumerate(row):
            perm = task.elements[g]
            state = tuple(perm[state[i]] for i in range(5))  # apply g after the prefix
            assert task.elements[tgt[t]] == state


def test_a5_is_the_even_permutations_and_a_group():
    task = get_task("a5")
    assert task.vocab_size == 60
    table = task.table
    assert all(sorted(r) == list(range(60)) for r in table)  # a Latin square: a group table
    s3 = get_task("s3")
    assert s3.vocab_size == 6 and not (s3.table == s3.table.T).all()  # S3 is not abelian


def test_mod_arith_brackets_evaluates_with_brackets():
    task = get_task("mod_arith_brackets")
    b = task.sample(rng(), 8, length=41)
    sym = {5: "+", 6: "-", 7: "*", 8: "(", 9: ")"}
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        assert len(row) == 41
        expr = "".join(sym.get(t, str(t)) for t in row)
        assert tgt[-1] == eval(expr) % 5  # Python's own evaluation of the bracketed string


def test_formal_languages_match_their_definition():
    b = get_task("even_pairs").sample(rng(), 8, length=20)
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        pairs = sum(row[i] != row[i + 1] for i in range(len(row) - 1))
        assert tgt[-1] == int(pairs % 2 == 0)
    b = get_task("cycle_navigation").sample(rng(), 8, length=20)
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        assert tgt[-1] == sum({0: 1, 1: -1, 2: 0}[m] for m in row) % 5
    b = get_task("reverse_string").sample(rng(), 4, length=9)
    assert b.inputs.shape == (4, 18)
    assert (b.targets[:, 9:] == b.inputs[:, :9].flip(1)).all() and (b.inputs[:, 9:] == 2).all()
    b = get_task("duplicate_string").sample(rng(), 4, length=5)
    assert (b.targets[:, 5:] == b.inputs[:, :5].repeat(1, 2)).all()
    b = get_task("bucket_sort").sample(rng(), 4, length=7)
    assert (b.targets[:, 7:] == b.inputs[:, :7].sort(1).values).all()
    b = get_task("stack_manipulation").sample(rng(3), 16, length=10)
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        stack = []
        for t in row[:10]:
            if t < 2:
                stack.append(t)
            elif t == 2 and stack:
                stack.pop()
            elif t > 2:
                stack.append(t - 3)
        out = [v for v in tgt if v != IGNORE]
        assert out == stack[::-1] + [2] * (11 - len(stack))


def test_listops_answers_match_a_direct_evaluation():
    task = get_task("listops", max_depth=4, max_args=4, min_length=5, max_length=60)
    b = task.sample(rng(), 16)
    ops = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10}
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        words = [TOKENS[t] for t in row if TOKENS[t] != "<pad>"]
        stack = [[]]
        for w in words:
            if w in ops:
                stack.append([w])
            elif w == "]":
                op, *args = stack.pop()
                stack[-1].append(ops[op](args))
            else:
                stack[-1].append(int(w))
        assert 5 <= len(words) <= 60
        assert tgt[len(words) - 1] == stack[0][0]


def test_unknown_task_and_bad_options():
    with pytest.raises(ValueError, match="unknown task 'nope'; tasks: mqar, .*parity"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['vocab'\].*accepts.*vocab_size"):
        get_task("mqar", vocab=3)
    with pytest.raises(ValueError, match=r"num_pairs must be an int in \[1, 16\], got 17"):
        get_task("mqar", num_pairs=17)
    with pytest.raises(ValueError, match="modulus must be an int >= 2, got 1"):
        get_task("mod_arith", modulus=1)
    with pytest.raises(ValueError, match="group must be"):
        from rnnzoo.tasks.state_tracking import PermutationComposition
        PermutationComposition(group="s4")


def test_scaled_accuracy():
    task = get_task("s3")
    assert task.summarize({"correct": 1, "count": 6, "nll": 0})["scaled_acc"] == pytest.approx(0)
    assert task.summarize({"correct": 6, "count": 6, "nll": 0})["scaled_acc"] == 1


# -- file tasks --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["text", "classify", "forecast", "regress"])
def test_missing_file_names_the_path(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="no_such_file.csv"):
        get_task(name, path=tmp_path / "no_such_file.csv")


def test_text_lm_bytes_and_chars(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("héllo wörld " * 50)
    task = get_task("text", path=path, seq_len=16)
    b = task.sample(rng(), 3)
    assert task.vocab_size == 256 and (b.inputs[:, 1:] == b.targets[:, :-1]).all()
    chars = get_task("text", path=path, mode="char", seq_len=16)
    assert chars.vocab_size == len(set("héllo wörld "))
    b = chars.sample(rng(), 2, split="test")
    assert chars.decode(b.inputs[0]) in "héllo wörld " * 60
    # a model that knows nothing (uniform) has bpc = log2(vocab)
    uniform = torch.zeros(2, 16, chars.vocab_size)
    assert chars.summarize(chars.score(uniform, b))["bpc"] == pytest.approx(np.log2(chars.vocab_size))


@pytest.mark.parametrize("fmt", ["csv", "npy", "npz"])
def test_classification_files(tmp_path, fmt):
    g = rng()
    x = g.normal(size=(50, 12))
    y = (x.mean(1) > 0).astype(int) * 3 + 1  # labels 1 and 4, remapped to 0 and 1
    if fmt == "csv":
        path = tmp_path / "d.csv"
        np.savetxt(path, np.concatenate([x, y[:, None]], 1), delimiter=",",
                   header=",".join(f"c{i}" for i in range(13)), comments="")
    elif fmt == "npy":
        path = tmp_path / "d.npy"
        np.save(path, np.concatenate([x, y[:, None]], 1))
    else:
        path = tmp_path / "d.npz"
        np.savez(path, x=x, y=y)
    task = get_task("classify", path=path)
    assert task.input_dim == 1 and task.output_dim == 2 and task.classes == [1, 4]
    b = task.sample(rng(), 8)
    assert b.inputs.shape == (8, 12, 1) and set(b.targets[:, -1].tolist()) <= {0, 1}
    assert (b.targets[:, :-1] == IGNORE).all()


def test_forecast_baselines_are_exact_where_they_should_be(tmp_path):
    t = np.arange(400)
    periodic = np.sin(2 * np.pi * t / 8)
    path = tmp_path / "s.csv"
    np.savetxt(path, np.stack([periodic, 0.5 * periodic], 1), delimiter=",", header="a,b",
               comments="")
    task = get_task("forecast", path=path, window=16, horizon=4, season=8)
    base = task.baselines()
    assert base["seasonal_naive"]["mse"] < 1e-10  # a period-8 series is its own seasonal forecast
    assert base["linear"]["mse"] < 1e-8           # a sinusoid obeys a linear recurrence
    assert get_task("forecast", path=path, window=16, horizon=4).baselines()["seasonal_naive"]["mse"] > 0.1
    b = task.sample(rng(), 5)
    assert b.inputs.shape == (5, 16, 2) and b.targets.shape == (5, 16, 8)
    assert b.mask[:, -1].all() and b.mask.sum() == 5
    # the mean forecast (zeros on the z-scale) has an MSE near the variance
    sums = task.score(torch.zeros(5, 16, 8), b)
    assert task.summarize(sums)["mse"] > 0.1


def test_forecast_errors(tmp_path):
    path = tmp_path / "short.csv"
    np.savetxt(path, np.arange(20.0)[:, None], delimiter=",")
    with pytest.raises(ValueError, match="too few"):
        get_task("forecast", path=path, window=16, horizon=4)
    with pytest.raises(ValueError, match=r"season must be an int in \[1, 4\], got 5"):
        get_task("forecast", path=path, window=4, horizon=2, season=5)
