"""The speed harness: its table, baselines with a length limit, the memory probe, the
timing helper, the command line with and without the peers."""

import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnzoo import bench
from rnnzoo.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def _table(groups, **kw):
    lines = []
    rows = bench.run_table(groups, repeat=1, warmup=0, out=lines.append, **kw)
    return rows, "\n".join(lines)


def test_table_compares_each_mode_with_the_reference():
    groups = bench.cases_for(["mingru"], None, [16], 2, 4, {}, "float32", "cpu", baselines=False)
    rows, text = _table(groups, memory=False)
    assert [r["mode"] for r in rows] == ["sequential", "scan"]
    assert rows[0]["speedup"] == 1.0 and rows[1]["baseline_label"] == "sequential"
    assert all(r["fwd"] > 0 and r["fwd_bwd"] > 0 for r in rows)
    assert "vs sequential" in text


def test_grid_layers_time_each_mode_against_the_reference_on_a_square_grid():
    """--grid: 2-D layers on (B, side, side, d) grids, side = isqrt(length); scan2d's modes
    are its 1-D layer's, each compared with the reference; a 1-D name is refused."""
    groups = bench.cases_for(["plstm", "scan2d"], None, [17], 2, 4, {"scan2d": {"layer": "mingru"}},
                             "float32", "cpu", grid=True)
    case = groups[0][0]
    run, x = case.build()
    assert tuple(x.shape) == (2, 4, 4, 4) and run().shape == x.shape
    rows, text = _table(groups, memory=False)
    assert [(r["layer"], r["mode"]) for r in rows] == [
        ("plstm", "sequential"), ("plstm", "wavefront"), ("plstm", "doubling"), ("plstm", "block"),
        ("scan2d", "sequential"), ("scan2d", "scan")]
    assert rows[-1]["baseline_label"] == "sequential" and "vs sequential" in text
    with pytest.raises(KeyError, match="2-D layer"):
        bench.cases_for(["mingru"], None, [16], 2, 4, {}, "float32", "cpu", grid=True)


def test_baseline_is_skipped_beyond_its_max_length(monkeypatch):
    monkeypatch.setattr(bench, "BASELINES", Registry("baseline", names=r".+"))
    calls = []

    @bench.register_baseline("mingru", "toy", max_length=8, why="too slow beyond")
    def toy(layer, x):
        calls.append(x.shape[1])
        return lambda: layer(x, mode="sequential")[0]

    groups = bench.cases_for(["mingru"], {"scan"}, [8, 16], 2, 4, {}, "float32", "cpu")
    rows, text = _table(groups, memory=False)
    assert calls == [8]  # built (and timed) at T=8 only
    assert "skipped: T > 8: too slow beyond" in text
    assert [(r["length"], r["baseline_label"]) for r in rows] == [(8, "toy"), (8, "toy"),
                                                                  (16, "scan")]


def test_a_failing_baseline_is_reported_and_the_table_goes_on(monkeypatch):
    monkeypatch.setattr(bench, "BASELINES", Registry("baseline", names=r".+"))

    @bench.register_baseline("mingru", "broken peer")
    def broken(layer, x):
        def run():
            raise RuntimeError("an in-place write to a view\nsecond line")
        return run

    groups = bench.cases_for(["mingru"], {"scan"}, [8], 2, 4, {}, "float32", "cpu")
    rows, text = _table(groups, memory=False)
    assert "broken peer" in text and "failed: RuntimeError: an in-place write to a view" in text
    assert "second line" not in text
    assert [(r["mode"], r["baseline_label"]) for r in rows] == [("scan", "scan")]  # timed
    monkeypatch.setattr(bench, "time_case", lambda *a: 1 / 0)  # a layer of ours: raises
    with pytest.raises(ZeroDivisionError):
        _table(groups, memory=False)


def test_peak_memory_probe_and_its_time_limit():
    small = bench.Case(layer="mingru", mode="scan", batch=2, length=16, d_model=4, options={})
    peak, done = bench.peak_memory(small)
    assert done and peak >= 0 and math.isfinite(peak)
    slow = bench.Case(layer="gateloop", mode="sequential", batch=4, length=20000, d_model=64,
                      options={})
    peak, done = bench.peak_memory(slow, time_limit=0.05)
    assert not done and peak >= 0  # stopped mid-way: the peak so far, a lower bound
    broken = bench.Case(layer="mingru", mode="scan", batch=2, length=16, d_model=4,
                        options={"no_such_option": 1})
    peak, done = bench.peak_memory(broken)  # the probe dies before measuring anything
    assert math.isnan(peak) and not done


def test_bad_arguments_are_named():
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    with pytest.raises(ValueError, match="--lengths"):
        bench.main(p.parse_args(["--layers", "mingru", "--lengths", "0"]))


@pytest.mark.parametrize("argv,message", [
    (["--options", "[1]"], r"--options must be a JSON object of objects"),
    (["--options", '{"mingru": 2}'], r"--options must be a JSON object of objects"),
    (["--options", "{bad"], r"--options is not valid JSON \(Expecting property name"),
    (["--options", '{"mingruu": {}}'], r"unknown layer 'mingruu'"),
    (["--options", '{"mingru": {"expand": "x"}}'], r"--options for layer 'mingru' "
                                                   r"\{'expand': 'x'\}: "),
    (["--options", '{"mingru": {"nope": 1}}'], r"--options for layer 'mingru' .*'nope'"),
    (["--lengths", "8,x"], r"--lengths must be comma-separated ints, got '8,x'"),
    (["--grid", "--family", "classic"], r"--grid takes --layers"),
])
def test_bad_options_are_one_line_exit_2(argv, message, capsys):
    """`rnnzoo bench` with a bad --options or --lengths: one line `rnnzoo bench: error:
    ...`, exit code 2, before anything is timed. Before, a list raised AttributeError, a bad
    option value a TypeError traceback (exit 1) from the timing loop, bad JSON a SystemExit
    of another form (exit 1), and a misspelt layer name was ignored."""
    from rnnzoo.cli import main
    small = ["--batch", "1", "--repeat", "1", "--no-memory"]
    small += [] if "--lengths" in argv else ["--lengths", "8"]
    layers = [] if "--grid" in argv else ["--layers", "mingru"]
    assert main(["bench", *layers, *argv, *small]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnzoo bench: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert "fwd ms" not in out  # nothing was timed


def test_memory_probe_runs_a_peer_baseline():
    """The probe process imports the module that registered the case's baseline."""
    import importlib.util
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed: see .ci/install-peers")
    import peers.mamba_ssm  # noqa: F401  (registers the baseline in this process)
    case = bench.Case(layer="mamba", mode="sequential", batch=2, length=16, d_model=8,
                      options={}, baseline="mamba_ssm.selective_scan_ref")
    peak, done = bench.peak_memory(case)
    assert done and math.isfinite(peak)


def test_torch_baselines_are_registered_without_peers():
    assert list(bench.baselines_for("lstm"))[0] == "torch.nn.LSTM"
    assert bench.BASELINES["rnn_relu/torch.nn.RNN"].extra == dict(
        layer="rnn_relu", label="torch.nn.RNN", max_length=None, why="")
    with pytest.raises(ValueError, match="unknown baseline 'lstm/nope'.*lstm/torch.nn.LSTM"):
        bench.BASELINES["lstm/nope"]


def test_memory_probe_runs_a_torch_baseline():
    case = bench.Case(layer="rnn_relu", mode="sequential", batch=2, length=8, d_model=4,
                      options={}, baseline="torch.nn.RNN")
    peak, done = bench.peak_memory(case)
    assert done and math.isfinite(peak)


def test_median_time_runs_warmup_then_repeat():
    calls = []
    t = bench.median_time(lambda: calls.append(1), "cpu", repeat=3, warmup=2)
    assert len(calls) == 5 and t >= 0


def test_resident_memory():
    peak, now = bench.resident_memory(), bench.resident_memory(peak=False)
    assert peak >= now > 0


def _run(args, pythonpath):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


SMALL = ["--lengths", "8", "--batch", "2", "--d-model", "4", "--repeat", "1", "--warmup", "0",
         "--no-memory"]


def test_command_line_without_peers():
    """`python -m rnnzoo.bench` with only the package on the path: torch's baselines, no
    peers; a bad name is one line."""
    r = _run(["-m", "rnnzoo.bench", "--layers", "rnn_tanh,mamba", *SMALL], [ROOT / "src"])
    assert r.returncode == 0, r.stderr
    assert "torch.nn.RNN" in r.stdout and "(baseline)" in r.stdout
    assert "selective_scan_ref" not in r.stdout
    r = _run(["-m", "rnnzoo.bench", "--layers", "nope", *SMALL], [ROOT / "src"])
    assert r.returncode == 2 and r.stderr.startswith("rnnzoo bench: error: unknown layer 'nope'")


def test_benchmarks_layers_script_loads_the_peers():
    r = _run(["benchmarks/layers.py", "--layers", "mamba", *SMALL], [ROOT / "src"])
    assert r.returncode == 0, r.stderr
    assert "mamba_ssm.selective_scan_ref" in r.stdout  # timed, or skipped when not installed


def test_flops_counted_from_shapes_match_the_lstm_formula_by_hand():
    """nn.LSTM(d, h): 8 B T h (d + h) forward, twice that backward. rnnzoo's lstm layer
    runs the same products, except the gradient through the zero initial state (no input
    needs it), one (B, h) x (h, 4h) product: 2 B h 4h FLOPs."""
    B, T, d = 2, 3, 4
    assert bench.lstm_flops(B, T, d, d) == 3 * 8 * B * T * d * (d + d) == 4608
    for mode in ("sequential", "fused"):
        assert bench.layer_flops("lstm", B, T, d, mode=mode) == 4608 - 2 * B * d * 4 * d
    # a layer with a chunk mode
    assert 0 < bench.layer_flops("gla", 2, 64, 8, dict(num_heads=2), mode="chunk")


def test_vs_lstm_table_rows_and_utilisation(monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda threads=None: 1e9)
    lines = []
    rows = bench.speed_vs_lstm(["lstm", "mingru"], batch=2, length=8, d_model=4, threads=(1,),
                               repeat=1, out=lines.append)
    assert [(r["layer"], r["mode"], r["threads"]) for r in rows] == [
        ("lstm", "fused", 1), ("mingru", "scan", 1)]
    for r in rows:
        assert r["ratio"] > 0 and r["flops"] == bench.layer_flops(r["layer"], 2, 8, 4)
        assert r["utilisation"] == pytest.approx(r["flops"] / (r["ms"] / 1e3) / 1e9)
    text = "\n".join(lines)
    assert "torch.nn.LSTM" in text and "over 2x nn.LSTM at 1 thread(s):" in text
    assert "malloc thresholds default" in text  # only the command pins the process's malloc


def test_matmul_peak_is_a_rate():
    assert bench.matmul_peak(1, n=64, repeat=2) > 1e6


def test_command_line_vs_lstm_and_bad_threads():
    r = _run(["-m", "rnnzoo.bench", "--vs-lstm", "--layers", "mingru", "--threads", "1",
              *SMALL], [ROOT / "src"])
    assert r.returncode == 0, r.stderr
    assert "x LSTM" in r.stdout and "util" in r.stdout and "mingru" in r.stdout
    if platform.libc_ver()[0] == "glibc":
        assert "malloc thresholds pinned" in r.stdout
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    with pytest.raises(ValueError, match="--threads"):
        bench.main(p.parse_args(["--vs-lstm", "--layers", "mingru", "--threads", "0"]))
    r = _run(["benchmarks/cpu.py", "--layers", "mingru", "--threads", "1", *SMALL],
             [ROOT / "src"])
    assert r.returncode == 0, r.stderr
    assert "mingru" in r.stdout and "over 2x nn.LSTM at 1 thread(s)" in r.stdout
