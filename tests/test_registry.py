"""The registries: the README's layer table, layer metadata, names known and unknown,
duplicates, discovery of every registration."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rnnzoo
from rnnzoo.registry import CELLS, LAYERS, Info, Registry, UnknownName, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_layer_table_matches_registry():
    text = README.read_text()
    m = re.search(r"<!-- layers:start -->\n(.*?)\n<!-- layers:end -->", text, re.S)
    assert m, "README lacks the generated layer table markers"
    assert m.group(1).strip() == markdown_table().strip(), \
        "README layer table is stale: run `rnnzoo list --write-readme README.md`"


def test_list_layers_metadata():
    infos = rnnzoo.list_layers()
    assert {"lstm", "mingru"} <= {i.name for i in infos}
    for i in infos:
        assert i.family and i.paper and i.modes
        assert i.modes[0] in ("sequential", "recurrent"), "reference mode comes first"


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown layer 'nope'.*lstm.*mingru"):
        rnnzoo.create("nope", d_model=4)


def test_bad_d_model():
    with pytest.raises(ValueError, match="d_model must be a positive int, got 0"):
        rnnzoo.create("lstm", d_model=0)


def test_unknown_family():
    with pytest.raises(ValueError, match="family must be one of"):
        rnnzoo.list_layers("nope")


# -- the Registry ---------------------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src"


class _A:
    pass


class _B:
    pass


def test_unknown_name_lists_the_valid_ones():
    reg = Registry("widget")
    reg.add(Info("b", _B))
    reg.add(Info("a", _A))
    with pytest.raises(UnknownName, match=r"^unknown widget 'c'; registered widgets: a, b$"):
        reg["c"]
    with pytest.raises(ValueError, match=r"unknown cell 'nope'; registered cells: .*\bgru\b"):
        CELLS["nope"]
    assert "c" not in reg and reg.get("c") is None and "a" in reg


def test_unknown_name_is_a_value_error_and_a_key_error():
    reg = Registry("widget")
    for kind in (ValueError, KeyError):
        with pytest.raises(kind):
            reg["nope"]
    try:
        LAYERS["nope"]
    except UnknownName as e:
        assert isinstance(e, ValueError) and isinstance(e, KeyError)
        assert str(e).startswith("unknown layer 'nope'")  # the message, not KeyError's repr


def test_duplicate_names_are_refused():
    reg = Registry("widget")
    reg.add(Info("a", _A))
    with pytest.raises(ValueError, match="widget name 'a' is already registered by"):
        reg.add(Info("a", _B))
    assert reg["a"].cls is _A
    reg.add(Info("a", _A, paper="again"))  # the same object again (a module imported again)
    assert reg["a"].paper == "again" and len(reg) == 1
    with pytest.raises(ValueError, match="layer name 'mingru' is already registered"):
        rnnzoo.register("mingru", family="diagonal", paper="x")(
            type("MinGRU", (), {"modes": ("sequential",)}))
    assert LAYERS["mingru"].cls.__module__ == "rnnzoo.layers.mingru"


@pytest.mark.parametrize("name", ["Bad", "a-b", "", "a b", "é", 3, None])
def test_bad_names_are_refused(name):
    reg = Registry("widget")
    with pytest.raises(ValueError, match="widget name must be lowercase letters, digits and '_'"):
        reg.add(Info(name, _A))
    assert len(reg) == 0


def test_a_registry_may_take_other_names():
    reg = Registry("baseline", names=r"[a-z0-9_]+/\S.*")
    reg.add(Info("lstm/torch.nn.LSTM", _A))
    with pytest.raises(ValueError, match=r"baseline name must match .*, got 'torch.nn.LSTM'"):
        reg.add(Info("torch.nn.LSTM", _B))


def test_layer_entries_are_checked():
    cls = type("Toy", (), {"modes": ("sequential",)})
    with pytest.raises(ValueError, match="family must be one of"):
        rnnzoo.register("toy_layer", family="nope", paper="x")(cls)
    with pytest.raises(ValueError, match="modes is empty"):
        rnnzoo.register("toy_layer", family="diagonal", paper="x")(type("Toy", (), {"modes": ()}))
    assert "toy_layer" not in LAYERS


def test_remove_takes_an_entry_out():
    reg = Registry("widget")
    reg.register("a", paper="p")(_A)
    assert reg.remove("a").paper == "p" and "a" not in reg


def _written_registrations(folder: str, decorator: str) -> set[str]:
    """Names passed as a written-out string to `decorator(...)` in the files of a folder."""
    names = set()
    for path in (SRC / "rnnzoo" / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == decorator and node.args \
                    and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def test_discovery_finds_every_registration():
    """In a fresh process, reading the registries finds every layer and cell that a module
    registers, with nothing imported beforehand; `import rnnzoo` registers nothing."""
    code = ("import sys, json, rnnzoo\n"
            "from rnnzoo.registry import CELLS, LAYERS\n"
            "before = sorted(m for m in sys.modules if m.startswith(('rnnzoo.layers.', "
            "'rnnzoo.cells.')))\n"
            "print(json.dumps([before, sorted(LAYERS), sorted(CELLS), "
            "{n: LAYERS[n].family for n in LAYERS}]))\n")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    before, layers, cells, family = json.loads(out)
    assert before == ["rnnzoo.layers.base"]  # the protocol class, re-exported; no layer
    assert _written_registrations("layers", "register") <= set(layers)
    assert _written_registrations("cells", "cell") <= set(cells)
    assert set(cells) <= set(layers) and all(family[c] == "classic" for c in cells)
    assert len(layers) == len(LAYERS) and len(cells) == len(CELLS)
