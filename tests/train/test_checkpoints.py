"""The AdamW state in checkpoint.safetensors is keyed by parameter name; checkpoints keyed by
position (written before) resume where the positions still fit and fail in one line where
they do not."""

from __future__ import annotations

import pytest
from test_loop import tiny

from rnnzoo.models.checkpoint import load_tensors, save_tensors
from rnnzoo.train import train


def _as_positional(path, order):
    """Rewrite a checkpoint's AdamW state as older rnnzoo wrote it: `optim.<index>.<key>`,
    numbering the parameters by `order` (a list of names)."""
    tensors, meta = load_tensors(path)
    meta.pop("optim_keys")
    old = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            owner, key = k[len("optim."):].rsplit(".", 1)
            k = f"optim.{order.index(owner)}.{key}"
        old[k] = v
    save_tensors(path, old, meta)


def _order(config):
    """Parameter names in the order the training loop's AdamW numbers them."""
    from rnnzoo.train.loop import build, make_optimizer
    _, model = build(config)
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in make_optimizer(model, config).param_groups
            for p in g["params"]]


def test_state_is_keyed_by_parameter_name(tmp_path):
    config = tiny(tmp_path)
    train(config, stop_at=3, quiet=True)
    tensors, meta = load_tensors(tmp_path / "checkpoint.safetensors")
    assert meta["optim_keys"] == "names"
    owners = {k[len("optim."):].rsplit(".", 1)[0] for k in tensors if k.startswith("optim.")}
    assert owners == set(_order(config))


def test_positional_checkpoint_resumes_like_not_stopping(tmp_path):
    whole = train(tiny(tmp_path / "whole"), quiet=True)
    config = tiny(tmp_path / "split")
    train(config, stop_at=3, quiet=True)
    _as_positional(tmp_path / "split" / "checkpoint.safetensors", _order(config))
    resumed = train(tiny(tmp_path / "split"), resume=True, quiet=True)
    assert resumed["value"] == whole["value"] and resumed["eval"] == whole["eval"]


def test_positional_checkpoint_of_another_order_fails_in_one_line(tmp_path):
    config = tiny(tmp_path)
    train(config, stop_at=3, quiet=True)
    order = _order(config)
    shapes = dict(load_tensors(tmp_path / "checkpoint.safetensors")[0])
    # an older parameter order: the first matrix and the first vector swap places
    i = next(i for i, n in enumerate(order) if shapes[f"model.{n}"].dim() < 2)
    order[0], order[i] = order[i], order[0]
    _as_positional(tmp_path / "checkpoint.safetensors", order)
    with pytest.raises(ValueError, match="parameter order differs.*cannot be resumed") as e:
        train(tiny(tmp_path), resume=True, quiet=True)
    assert "\n" not in str(e.value)
