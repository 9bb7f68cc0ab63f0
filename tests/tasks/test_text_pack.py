"""The text task's packed batches: documents end to end with cu_seqlens, the same loss as
the padded batch of the same documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnzoo.models.stack import build_model
from rnnzoo.tasks import get_task
from rnnzoo.tasks.files import documents

DOCS = ["the cat sat on the mat", "a", "dogs bark\nat night", "xy", "one more document here"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(DOCS * 30) + "\n\n\n")
    return path


def test_documents_split_at_blank_lines():
    data = np.frombuffer(b"ab\n\ncd\ne\n\n\nf\n\ngh", dtype=np.uint8).astype(np.int64)
    got = [bytes(d.astype(np.uint8)).decode() for d in documents(data, 10)]
    assert got == ["ab", "cd\ne", "gh"]  # a single newline stays, "f" is too short


def test_packed_batch_has_no_padding_and_its_boundaries(text_file):
    task = get_task("text", path=str(text_file), seq_len=12, pack=True)
    batch = task.sample(np.random.default_rng(0), 12)
    cu = batch.cu_seqlens
    assert batch.inputs.shape == (1, int(cu[-1])) and cu[0] == 0 and len(cu) == 13
    lengths = (cu[1:] - cu[:-1]).tolist()
    assert all(1 <= n <= 12 for n in lengths) and len(set(lengths)) > 1
    # targets are the next symbol inside each document, never across a boundary
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert torch.equal(batch.inputs[0, a + 1:b], batch.targets[0, a:b - 1])
    half = batch.slice(3, 12)
    assert torch.equal(half.cu_seqlens, cu[3:] - cu[3])
    assert torch.equal(half.inputs, batch.inputs[:, int(cu[3]):])


@pytest.mark.parametrize("layer", ["mamba", "gla", "lstm"])
def test_packed_loss_equals_padded_loss(text_file, layer):
    task = get_task("text", path=str(text_file), seq_len=12, pack=True)
    batch = task.sample(np.random.default_rng(1), 6)
    padded, lengths = batch.padded()
    assert padded.inputs.shape[0] == 6
    torch.manual_seed(0)
    model = build_model(layer=layer, d_model=16, num_layers=2, vocab_size=256, mlp_ratio=2,
                        layer_options={"d_conv": 3} if layer == "mamba" else {}).double()
    out_p, state = model(batch.inputs, cu_seqlens=batch.cu_seqlens)
    out_b, state_b = model(padded.inputs, lengths=lengths)
    loss_p, n_p = task.loss(out_p, batch)
    loss_b, n_b = task.loss(out_b, padded)
    assert n_p == n_b == int(batch.cu_seqlens[-1])
    assert abs(loss_p.item() - loss_b.item()) < 1e-6 * abs(loss_b.item())  # float32 loss
    for s, sb in zip(state, state_b):
        for t, tb in zip(s if isinstance(s, tuple) else (s,), sb if isinstance(sb, tuple) else (sb,)):
            assert t.shape[0] == 6 and (t - tb).abs().max() < 1e-9
    # without cu_seqlens the documents would leak into each other: the loss differs
    out_leak, _ = model(batch.inputs)
    assert abs(task.loss(out_leak, batch)[0].item() - loss_b.item()) > 1e-6


def test_training_on_packed_batches_passes_the_boundaries(text_file, tmp_path):
    """`rnnzoo train --pack`: the loss the loop logs at step 1 is the packed loss (state reset
    at each document), not that of the documents run into each other."""
    import json

    from rnnzoo.train import TrainConfig, train
    from rnnzoo.train.loop import build, train_batch
    config = TrainConfig(task="text", layer="gla", d_model=8, num_layers=1, steps=1,
                         batch_size=6, eval_every=1, eval_batches=1, log_every=1, threads=1,
                         out=str(tmp_path / "run"),
                         task_options=dict(path=str(text_file), seq_len=12, pack=True))
    train(config, quiet=True)
    logged = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
              if r and "loss" in json.loads(r)][0]["loss"]
    task, model = build(config)
    batch = train_batch(task, config, 0)
    with torch.no_grad():
        packed = task.loss(model(batch.inputs, cu_seqlens=batch.cu_seqlens)[0], batch)
        leaked = task.loss(model(batch.inputs)[0], batch)
    assert abs(logged - packed[0].item() / packed[1]) < 1e-5
    assert abs(logged - leaked[0].item() / leaked[1]) > 1e-4
