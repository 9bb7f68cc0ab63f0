"""The 2-D contract on every registered 2-D layer (its `tiny` config): every mode equals the
reference, float32 states (float64 for float64), outputs on the input's device, one clear
line for a bad shape; the registry, the floor and `rnnzoo list --grid`."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.grid import GridLayer, create_grid, register_grid
from rnnzoo.registry import GRID_LAYERS, Info

NAMES = sorted(GRID_LAYERS)


def build(name, dtype=torch.float64):
    tiny = dict(GRID_LAYERS[name].tiny)
    d = tiny.pop("d_model")
    torch.manual_seed(0)
    return create_grid(name, d, **tiny).to(dtype), d


def flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in flat(s)]


def test_the_three_are_registered():
    assert {"scan2d", "plstm", "chimera"} <= set(NAMES)
    assert all(GRID_LAYERS[n].modes[0] == "sequential" for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_modes_equal_the_reference(name):
    layer, d = build(name)
    x = torch.randn(2, 3, 4, d, dtype=torch.float64)
    y, state = layer(x, mode="sequential")
    assert y.shape == x.shape
    for mode in layer.modes[1:]:
        y2, state2 = layer(x, mode=mode)
        torch.testing.assert_close(y2, y, rtol=1e-9, atol=1e-9)
        for a, b in zip(flat(state2), flat(state)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert all(s.dtype == torch.float64 for s in flat(state))


@pytest.mark.parametrize("name", NAMES)
def test_state_owns_its_memory(name):
    """No returned state is a view of x or of a (batch, height, width, ...) intermediate:
    writing into x leaves it as it was, and it holds no more bytes than its elements."""
    layer, d = build(name)
    for mode in layer.modes:
        x = torch.randn(2, 5, 6, d, dtype=torch.float64)
        with torch.no_grad():
            _, state = layer(x, mode=mode)
        kept = [t.clone() for t in flat(state)]
        x.mul_(-3.0).add_(7.0)
        assert all(torch.equal(a, b) for a, b in zip(flat(state), kept)), mode
        for t in flat(state):
            assert t.untyped_storage().nbytes() <= t.numel() * t.element_size(), (mode, t.shape)


@pytest.mark.parametrize("name", NAMES)
def test_float32_states_and_the_input_device(name):
    layer, d = build(name, torch.bfloat16)
    y, state = layer(torch.randn(1, 2, 3, d, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in flat(state))
    layer = layer.to("meta", torch.float32)
    y, state = layer(torch.empty(1, 2, 3, d, device="meta"))
    assert y.device.type == "meta" and all(s.device.type == "meta" for s in flat(state))


@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_are_one_line(name):
    layer, d = build(name, torch.float32)
    for bad in (torch.randn(2, 3, d), torch.randn(1, 2, 2, d + 1), torch.randn(1, 2, 3, 4, d)):
        with pytest.raises(ValueError) as err:
            layer(bad)
        msg = str(err.value)
        assert "\n" not in msg and f"got shape {tuple(bad.shape)}" in msg and "height" in msg


def test_registry_checks_and_names():
    class Empty(GridLayer):
        modes = ()

    with pytest.raises(ValueError, match="modes is empty"):
        register_grid("empty_grid_layer", paper="-")(Empty)
    with pytest.raises(ValueError, match="2-D layer name must be lowercase"):
        GRID_LAYERS.add(Info("Bad Name", Empty, modes=("sequential",)))
    with pytest.raises(ValueError, match="unknown 2-D layer 'nope'; registered 2-D layers: "
                                         "chimera, plstm, scan2d"):
        create_grid("nope", 4)


def test_grid_sits_between_layers_and_models():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "test_layering.py"
    spec = importlib.util.spec_from_file_location("layering_floors", path)
    layering = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layering)
    floor = layering.floor
    assert floor("rnnzoo.layers.gla") < floor("rnnzoo.grid.plstm") < floor("rnnzoo.models.stack")
    assert floor("rnnzoo.grid.plstm") < floor("rnnzoo.tasks.grid")


def test_rnnzoo_list_grid(capsys):
    from rnnzoo.cli import main

    main(["list", "--grid"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{len(NAMES)} 2-D layers"
    assert [line.split()[0] for line in out[:-1]] == NAMES
