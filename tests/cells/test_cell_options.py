"""Constructor options of the cells: bad values raise ValueError naming the option, and
`bias=False` cells have no bias parameters and still run."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.registry import CELLS

BAD = [
    ("miru1", dict(update_coefficient=1.5), "update_coefficient"),
    ("miru2", dict(reset_coefficient="x"), "reset_coefficient"),
    ("ran", dict(nonlinearity="relu"), "nonlinearity"),
    ("scrn", dict(context_size=0), "context_size"),
    ("scrn", dict(alpha=2.0), "alpha"),
    ("taugru", dict(delay=0), "delay"),
    ("unicornn", dict(dt=-0.1), "dt"),
]

WITH_BIAS_OPTION = ["miru1", "miru2", "multiplicative_lstm", "mut1", "mut2", "mut3", "nas",
                    "original_lstm", "peephole_lstm", "ran", "res_lstm", "scrn", "sgrn", "sgu",
                    "dsgu", "star", "taugru", "trnn", "tgru", "tlstm", "unicornn", "wmclstm"]


@pytest.mark.parametrize("name,options,option", BAD)
def test_bad_option_names_itself(name, options, option):
    with pytest.raises(ValueError, match=option):
        rnnzoo.create(name, d_model=4, **options)


@pytest.mark.parametrize("name", WITH_BIAS_OPTION)
def test_without_bias(name):
    layer = rnnzoo.create(name, d_model=4, hidden_size=3, bias=False)
    assert not [n for n, _ in layer.cell.named_parameters() if n.startswith("bias")]
    x = torch.randn(2, 5, 4)
    for mode in layer.modes:
        y, _ = layer(x, mode=mode)
        assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name, bad", [("antisymmetric_rnn", dict(epsilon=0)),
                                       ("cornn", dict(dt=-1.0)), ("lem", dict(dt=1.5)),
                                       ("indrnn", dict(nonlinearity="gelu")),
                                       ("fastgrnn", dict(gate_nonlinearity="softmax"))])
def test_bad_options_name_the_argument(name, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CELLS[name].cls(4, 5, **bad)
