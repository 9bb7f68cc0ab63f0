"""Whole-module serialisation of every registered layer: pickle (torch.save of a model,
spawned DataLoader / multiprocessing workers) and deepcopy give a layer that computes the
same outputs and states."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from test_conformance import NAMES, flat, inputs, make, max_err

from rnnzoo.models.stack import build_model


@pytest.mark.parametrize("name", NAMES)
def test_pickle_and_deepcopy(name):
    """Before: the 62 classic layers (classes made per cell) failed to pickle, 'attribute
    lookup LSTMCellLayer on rnnzoo.layers.classic failed'."""
    layer = make(name)
    x = inputs(layer)
    y, s = layer(x)
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert type(other) is type(layer)
        y2, s2 = other(x)
        assert max_err(y2, y) == 0 and max_err(s2, s) == 0
        assert all(a.dtype == b.dtype for a, b in zip(flat(s2), flat(s)))


def test_torch_save_whole_model():
    torch.manual_seed(0)
    model = build_model(layer="lstm", d_model=8, num_layers=2, vocab_size=11,
                        layer_options={"hidden_size": 5})
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    tokens = torch.randint(0, 11, (2, 7))
    assert torch.equal(loaded(tokens)[0], model(tokens)[0])
