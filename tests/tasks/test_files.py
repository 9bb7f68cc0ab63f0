"""The file tasks' readers: non-finite cells refused where they are, fixed splits kept,
the whole test split iterated once (tasks/files.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from rnnzoo.cli import main
from rnnzoo.tasks import IGNORE, get_task


def rng(seed=0):
    return np.random.default_rng(seed)


def write_csv(path, table, header=None):
    np.savetxt(path, table, delimiter=",", header=header or "", comments="")
    return path


def labelled(n=40, t=10, seed=0):
    x = rng(seed).normal(size=(n, t))
    y = (x.mean(1) > 0).astype(int)
    return x, y


# -- non-finite cells: refused with file, line and column ----------------------------------------
@pytest.mark.parametrize("cell", ["nan", "inf", "-inf", "NaN"])
def test_classification_csv_with_a_non_finite_cell_names_file_line_and_column(tmp_path, cell):
    x, y = labelled()
    path = write_csv(tmp_path / "d.csv", np.concatenate([x, y[:, None]], 1),
                     header=",".join(f"c{i}" for i in range(11)))
    lines = path.read_text().splitlines()
    cells = lines[7].split(",")  # line 8 of the file (the header is line 1)
    cells[3] = cell
    lines[7] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"d.csv, line 8, column 4 \('c3'\): '{cell}' is not "
                                         r"a finite number"):
        get_task("classify", path=path)


def test_regress_and_label_columns_are_checked_too(tmp_path):
    x, y = labelled()
    table = np.concatenate([x, y[:, None]], 1)
    table[5, -1] = np.nan  # the label / target column: no header, so line 6
    path = write_csv(tmp_path / "d.csv", table)
    for name in ("classify", "regress"):
        with pytest.raises(ValueError, match=r"d.csv, line 6, column 11: 'nan' is not a finite"):
            get_task(name, path=path)


def test_forecast_csv_with_nan_or_inf_is_refused_up_front(tmp_path):
    series = np.sin(np.arange(200) / 3.0)[:, None].repeat(2, 1)
    for bad, line, text in ((np.inf, 151, "inf"), (np.nan, 12, "nan")):
        s = series.copy()
        s[line - 2, 1] = bad  # header on line 1
        path = write_csv(tmp_path / "s.csv", s, header="a,b")
        with pytest.raises(ValueError, match=rf"s.csv, line {line}, column 2 \('b'\): "
                                             rf"'{text}' is not a finite number"):
            get_task("forecast", path=path, window=16, horizon=4)


def test_npy_and_npz_name_the_element(tmp_path):
    x, y = labelled()
    table = np.concatenate([x, y[:, None]], 1)
    table[3, 2] = np.inf
    np.save(tmp_path / "d.npy", table)
    with pytest.raises(ValueError, match=r"d.npy: row 4, column 3 is inf, not a finite number"):
        get_task("classify", path=tmp_path / "d.npy")
    x3 = x[..., None].repeat(2, 2)
    x3[7, 1, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=x3, y=y)
    with pytest.raises(ValueError, match=r"d.npz: x\[7, 1, 1\] is nan, not a finite number"):
        get_task("classify", path=tmp_path / "d.npz")
    np.savez(tmp_path / "r.npz", x=x, y=np.where(y > 0, np.nan, 1.0))
    with pytest.raises(ValueError, match=r"r.npz: y\[\d+\] is nan"):
        get_task("regress", path=tmp_path / "r.npz")


def test_bad_cells_at_the_command_line_are_one_line(tmp_path, capsys):
    series = np.sin(np.arange(120) / 3.0)[:, None]
    series[40] = np.nan
    path = write_csv(tmp_path / "s.csv", series)
    assert main(["train", "--task", "forecast", "--layer", "lstm", "--data", str(path),
                 "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rnnzoo train: error: {path}, line 41, column 1: 'nan' is not a finite number"


def test_csv_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,c\n1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match=r"d.csv, line 3, column 2 \('b'\): 'x' is not a number"):
        get_task("classify", path=path)
    path.write_text("1,2,0\n3,4\n")
    with pytest.raises(ValueError, match="d.csv, line 2: 2 columns, where the first data row has 3"):
        get_task("classify", path=path)
    path.write_bytes(b"1,2,0\n\xff\xfe,1,1\n")
    with pytest.raises(ValueError, match=r"d.csv: not UTF-8 text \(byte 6\)"):
        get_task("classify", path=path)
    text = tmp_path / "t.txt"
    text.write_bytes(b"abc" * 100 + b"\xff")
    with pytest.raises(ValueError, match=r"t.txt: not UTF-8 text \(byte 300\); mode 'byte'"):
        get_task("text", path=text, mode="char", seq_len=8)


# -- fixed splits (item 9) ---------------------------------------------------------------------
def test_classification_keeps_a_published_split_from_npz(tmp_path):
    """MNIST-1D ships x, y, x_test, y_test: the test split is exactly x_test."""
    x, y = labelled(60)
    xt, yt = labelled(17, seed=1)
    np.savez(tmp_path / "mnist1d.npz", x=x, y=y, x_test=xt, y_test=yt)
    task = get_task("classify", path=tmp_path / "mnist1d.npz")
    tx, ty = task.splits["test"]
    assert len(tx) == 17 and len(task.splits["train"][0]) == 60
    mean, std = x.mean(), x.std()  # z-normalised with the training split's statistics
    np.testing.assert_allclose(tx[..., 0], (xt - mean) / std, rtol=1e-5, atol=1e-5)
    assert (ty == yt).all()


@pytest.mark.parametrize("fmt", ["csv", "npy", "npz"])
def test_classification_and_regression_take_a_test_file(tmp_path, fmt):
    x, y = labelled(50)
    xt, yt = labelled(13, seed=2)
    paths = []
    for name, (a, b) in (("train", (x, y)), ("test", (xt, yt))):
        p = tmp_path / f"{name}.{fmt}"
        if fmt == "csv":
            write_csv(p, np.concatenate([a, b[:, None]], 1))
        elif fmt == "npy":
            np.save(p, np.concatenate([a, b[:, None]], 1))
        else:
            np.savez(p, x=a, y=b)
        paths.append(p)
    task = get_task("classify", path=paths[0], test_path=paths[1])
    assert len(task.splits["train"][0]) == 50 and (task.splits["test"][1] == yt).all()
    np.testing.assert_allclose(task.splits["test"][0][..., 0], (xt - x.mean()) / x.std(),
                               rtol=1e-5, atol=1e-5)
    assert task.options()["test_path"] == str(paths[1])
    reg = get_task("regress", path=paths[0], test_path=paths[1])
    np.testing.assert_allclose(reg.splits["test"][1][:, 0] * reg.y_std + reg.y_mean, yt,
                               atol=1e-6)


def test_test_file_must_match_the_training_file(tmp_path):
    x, y = labelled(30, t=10)
    xt, yt = labelled(8, t=12)
    np.save(tmp_path / "a.npy", np.concatenate([x, y[:, None]], 1))
    np.save(tmp_path / "b.npy", np.concatenate([xt, yt[:, None]], 1))
    with pytest.raises(ValueError, match=r"b.npy: test sequences of shape \(12, 1\).*\(10, 1\)"):
        get_task("classify", path=tmp_path / "a.npy", test_path=tmp_path / "b.npy")
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.npy"):
        get_task("classify", path=tmp_path / "a.npy", test_path=tmp_path / "nope.npy")


def test_forecast_takes_a_test_file_that_continues_the_series(tmp_path):
    s = np.sin(np.arange(300) / 4.0)[:, None] + np.arange(300)[:, None] / 100
    write_csv(tmp_path / "train.csv", s[:220], header="v")
    write_csv(tmp_path / "test.csv", s[220:], header="v")
    write_csv(tmp_path / "all.csv", s, header="v")
    split = get_task("forecast", path=tmp_path / "train.csv", test_path=tmp_path / "test.csv",
                     window=16, horizon=4)
    # the same as holding out the last 80 rows of one file
    whole = get_task("forecast", path=tmp_path / "all.csv", window=16, horizon=4,
                     test_fraction=80 / 300)
    for part in ("train", "test"):
        np.testing.assert_array_equal(split.parts[part], whole.parts[part])
    x, y = split.windows("test")
    assert len(x) == 80 - 4 + 1  # every test step is forecast; the context reaches back
    assert split.baselines() == whole.baselines()
    write_csv(tmp_path / "two.csv", np.concatenate([s[220:], s[220:]], 1), header="v,w")
    with pytest.raises(ValueError, match="two.csv: 2 columns, the training file .*train.csv has 1"):
        get_task("forecast", path=tmp_path / "train.csv", test_path=tmp_path / "two.csv")


# -- the whole test split, once ----------------------------------------------------------------
def test_classification_test_batches_cover_the_split_once(tmp_path):
    x, y = labelled(53)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    task = get_task("classify", path=tmp_path / "d.npz", test_fraction=0.4)
    batches = list(task.test_batches(8))
    tx, ty = task.splits["test"]
    assert [len(b.inputs) for b in batches] == [8, 8, 5]
    assert torch.equal(torch.cat([b.inputs for b in batches]), torch.from_numpy(tx))
    labels = torch.cat([b.targets[:, -1] for b in batches])
    assert labels.tolist() == ty.tolist()
    assert all((b.targets[:, :-1] == IGNORE).all() for b in batches)


def test_text_test_batches_predict_every_held_out_symbol_once(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(256)) * 4)
    task = get_task("text", path=path, seq_len=10, val_fraction=0.1)  # 102 held-out bytes
    batches = list(task.test_batches(4))
    targets = torch.cat([b.targets.reshape(-1) for b in batches])
    assert targets.tolist() == task.val_data[1:].tolist()
    for b in batches:
        assert (b.inputs[:, 1:] == b.targets[:, :-1]).all()
    assert [tuple(b.inputs.shape) for b in batches][-2:] == [(2, 10), (1, 1)]


def test_forecast_test_batches_are_every_test_window(tmp_path):
    path = write_csv(tmp_path / "s.csv", np.cos(np.arange(200) / 5.0)[:, None])
    task = get_task("forecast", path=path, window=12, horizon=3)
    batches = list(task.test_batches(16))
    x, y = task.windows("test")
    assert sum(len(b.inputs) for b in batches) == len(x)
    assert torch.equal(torch.cat([b.targets[:, -1] for b in batches]),
                       torch.from_numpy(y.reshape(len(y), -1)))


def test_classification_and_text_baselines_on_the_whole_test_split(tmp_path):
    x = rng().normal(size=(90, 5))
    y = np.array([0] * 60 + [1] * 20 + [2] * 10)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:12], y_test=np.array([0] * 3 + [1] * 9))
    task = get_task("classify", path=tmp_path / "d.npz")
    assert task.baselines() == {"majority": {"acc": 0.25}}
    path = tmp_path / "t.txt"
    path.write_bytes(b"ab" * 300)  # training part: half a, half b; add-one smoothing
    text = get_task("text", path=path, seq_len=8)
    p = (270 + 1) / (540 + 256)
    assert text.baselines()["unigram"]["bpc"] == pytest.approx(-np.log2(p))


def test_a_classification_run_prints_its_baseline(tmp_path, capsys):
    x, y = labelled(60)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert main(["train", "--task", "classify", "--layer", "gru", "--data", str(tmp_path / "d.npz"),
                 "--d-model", "8", "--depth", "1", "--steps", "2", "--batch-size", "4",
                 "--eval-every", "2", "--eval-batches", "1", "--threads", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert re.search(r"^  majority +acc 0\.\d+$", capsys.readouterr().out, re.M)
