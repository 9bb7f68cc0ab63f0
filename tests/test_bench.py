"""The speed harness: its table, baselines with a length limit, the memory probe."""

import math

import pytest

from rnnzoo import bench


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


def test_baseline_is_skipped_beyond_its_max_length(monkeypatch):
    monkeypatch.setattr(bench, "_BASELINES", {})
    monkeypatch.setattr(bench, "_MAX_LENGTH", {})
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
    with pytest.raises(SystemExit, match="--lengths"):
        bench.main(p.parse_args(["--layers", "mingru", "--lengths", "0"]))


def test_memory_probe_runs_a_peer_baseline():
    """The probe process loads the peer adapters (python -m runs bench.py as __main__, whose
    registry is not the package's)."""
    import importlib.util
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed: see .ci/install-peers")
    case = bench.Case(layer="mamba", mode="sequential", batch=2, length=16, d_model=8,
                      options={}, baseline="mamba_ssm.selective_scan_ref")
    peak, done = bench.peak_memory(case)
    assert done and math.isfinite(peak)
