"""ops.path_attention._PathQKV: a fresh PaTH sequence whose length is a multiple of the block,
from the fused projection qkv (B, T, 3, H, D): the chunk pieces and the block attention in C
with q, k and v read in place from qkv, the gradient of qkv written by the two kernels, and
the keys returned as a fresh cache of keys_len slots (zero past T). Against the torch path
(backend.force("torch"): _UT, _merge, _Attend over qkv.unbind(2), the cache padded after):
the output, the keys and the gradients of qkv, w and beta, with and without a gradient
reaching the keys; float64 tight, float32 loose; one batch row, one head, a head dim with a
packed tail (35), three merge levels, 1 and 2 threads; and the layer (chunk against
sequential, output, state and every gradient) through it."""

from __future__ import annotations

import contextlib

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads
from _native_check import threads as threads_

import rnnzoo
import rnnzoo.ops.path_attention as path_op
from rnnzoo.ops import backend
from rnnzoo.ops.native import path_chunk

pytestmark = pytest.mark.skipif(path_chunk.load() is None, reason="no C compiler")

CASES = [  # B, T, H, D, chunk_size, UT chunk, keys_len, threads
    (2, 64, 3, 8, 32, 16, 80, 2),    # two blocks of 32 from 16 (one merge), 6 head-rows
    (1, 32, 1, 35, 32, 32, 32, 1),   # one head-row, one block, no merge, a packed tail
    (1, 48, 2, 4, 16, 2, 50, 2),     # three blocks of 16 from 2 (three merge levels)
]


def run(qkv, w, beta, C, Lk, force):
    q, k, v = qkv.unbind(2)
    with backend.force(force) if force else contextlib.nullcontext():
        o, keys, moved = path_op.path_attention(q, k, v, w, beta, scale=0.4, chunk_size=C,
                                                qkv=qkv, keys_len=Lk)
    assert moved is None
    return o, keys


@pytest.mark.parametrize("keys_grad", [True, False], ids=["keys-grad", "no-keys-grad"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 3e-5)])
@pytest.mark.parametrize("B,T,H,D,C,c,Lk,threads", CASES)
def test_fused_path_matches_torch(monkeypatch, dtype, tol, keys_grad, B, T, H, D, C, c, Lk,
                                  threads):
    monkeypatch.setattr(path_op, "UT_CHUNK", c)
    calls = counter(monkeypatch, path_op._PathQKV, "apply")
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3, H, D, generator=g, dtype=dtype).requires_grad_()
    w = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=dtype),
                                      dim=-1).requires_grad_()
    beta = (2 * torch.rand(B, T, H, generator=g, dtype=dtype)).requires_grad_()
    ins = [qkv, w, beta]
    res = []
    for force in (None, "torch"):
        with threads_(threads):
            o, keys = run(qkv, w, beta, C, Lk, force)
        assert keys.shape == (B, H, Lk, D) and (keys[:, :, T:] == 0).all()
        res.append(outputs_and_grads([o, keys] if keys_grad else [o], ins) + [keys])
    assert calls[0] == 1
    names = ["o", "keys", "dqkv", "dw", "dbeta"] if keys_grad else ["o", "dqkv", "dw", "dbeta",
                                                                     "keys"]
    assert_close(res[0], res[1], names, tol)


def test_layer_through_the_fused_path_matches_sequential(monkeypatch):
    calls = counter(monkeypatch, path_op._PathQKV, "apply")
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=16, num_heads=2, max_len=80,
                          chunk_size=32).double()
    x = torch.randn(2, 64, 16, dtype=torch.float64, requires_grad=True)
    ins = [x, *layer.parameters()]
    res = []
    for mode in ("chunk", "sequential"):
        y, (kc, vc, _) = layer(x, mode=mode)
        res.append(outputs_and_grads([y, kc, vc], ins))
    assert calls[0] == 1
    assert_close(res[0], res[1], ["y", "k_cache", "v_cache", "dx"]
                 + [f"d{n}" for n, _ in layer.named_parameters()], 1e-10)
