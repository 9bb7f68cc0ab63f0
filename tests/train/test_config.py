"""TrainConfig: the learning-rate schedule, and configs saved under older names."""

from __future__ import annotations

import math

import pytest

from rnnzoo.train import TrainConfig, lr_at


def test_schedule_warms_up_then_decays_to_a_tenth():
    c = TrainConfig(task="parity", layer="lstm", lr=1.0, steps=100, warmup=10)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(55, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, c) == pytest.approx(0.1)


def test_old_field_and_option_names_are_translated(monkeypatch):
    from rnnzoo.layers import renames
    monkeypatch.setitem(renames.RENAMED_OPTIONS, "mingru", {"old_expand": "expand"})
    old = {"task": "parity", "layer": "mingru", "layers": 3, "layer_options": {"old_expand": 2},
           "no_longer_a_field": 1}
    config = TrainConfig.from_dict(old)
    assert (config.num_layers, config.layer_options) == (3, {"expand": 2})
    with pytest.raises(ValueError, match="'layers' is now 'num_layers', which is also set"):
        TrainConfig.from_dict(dict(old, num_layers=3))
