import re
from pathlib import Path

import pytest

import rnnzoo
from rnnzoo.registry import markdown_table

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
