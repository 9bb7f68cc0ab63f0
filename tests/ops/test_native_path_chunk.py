"""ops.native.path_chunk: PaTH attention's chunk pieces in C (every sub-chunk's UT transform
and the pairwise merges up to the attention block, threads over (batch x head) rows) against
ops.path_attention's torch form (_UT, then _merge per level, the scale applied): the four
pieces (intra on and below its diagonal, the part the attention reads) and the gradients of
q, k, w and beta, float64 tight and float32 loose; T not a multiple of the block (a
zero-padded last block), one batch row, one head, a head dim with a packed tail (35), sub-chunks
of odd size, 1 and 2 threads; and the layer through it against its sequential mode."""

from __future__ import annotations

import pytest
import torch
from _native_check import assert_close, counter, outputs_and_grads
from _native_check import threads as threads_

import rnnzoo
import rnnzoo.ops.path_attention as path_op
from rnnzoo.ops.chunk._common import to_chunks
from rnnzoo.ops.native import path_chunk

lib = path_chunk.load()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler")


def torch_pieces(q, k, w, beta, scale, c, levels):
    C = c << levels
    q, k, w = (to_chunks(t, C) for t in (q, k, w))
    beta = to_chunks(beta[..., None], C)
    q1, k1, P, intra = path_op._UT.apply(torch.matmul, *(t.unflatten(3, (-1, c)).flatten(2, 3)
                                                         for t in (q, k, w, beta)))
    for _ in range(levels):
        q1, k1, P, intra = path_op._merge(torch.matmul, q1, k1, P, intra)
    lower = torch.ones(C, C, dtype=torch.bool).tril()
    return q1 * scale, k1, P, torch.where(lower, intra * scale, 0)


def inputs(B, T, H, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype).transpose(1, 2)  # the layer's layout
    k = torch.randn(B, H, T, D, generator=g, dtype=dtype).transpose(1, 2)
    w = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=dtype), dim=-1)
    beta = 2 * torch.rand(B, T, H, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, w, beta)]


CASES = [
    (2, 70, 3, 8, 32, 1, 2),     # blocks of 64, the last of 6 steps; 6 head-rows on 2 threads
    (1, 37, 1, 35, 8, 2, 1),     # one head-row, blocks of 32 from chunks of 8, a packed tail
    (2, 29, 2, 4, 3, 2, 2),      # odd sub-chunks: blocks of 12
    (1, 5, 1, 4, 16, 0, 1),      # one short block, no merge
    (1, 64, 2, 32, 32, 1, 1),    # the layer's shapes: full 32-wide tiles
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 3e-5)])
@pytest.mark.parametrize("B,T,H,D,c,levels,threads", CASES)
def test_pieces_from_the_fused_projection(dtype, tol, B, T, H, D, c, levels, threads):
    """pieces_qkv: q and k read from qkv (B, T, 3, H, D) in place, v returned as (B, H, T, D),
    and the one gradient of qkv (q's and k's parts written by the kernel, v's copied) against
    the torch pieces over qkv.unbind(2)."""
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, T, 3, H, D, generator=g, dtype=dtype).requires_grad_()
    _, _, w, beta = inputs(B, T, H, D, dtype)
    ins = [qkv, w, beta]
    with threads_(threads):
        got = outputs_and_grads(path_chunk.pieces_qkv(lib, qkv, w, beta, 0.3, c, levels), ins)
    q, k, v = qkv.unbind(2)
    want = outputs_and_grads((*torch_pieces(q, k, w, beta, 0.3, c, levels),
                              v.transpose(1, 2)), ins)
    assert_close(got, want, ["qs", "k1", "P", "intra", "v", "dqkv", "dw", "dbeta"], tol)
    assert got[4].is_contiguous()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 3e-5)])
@pytest.mark.parametrize("B,T,H,D,c,levels,threads", CASES)
def test_pieces_match_torch(dtype, tol, B, T, H, D, c, levels, threads):
    ins = inputs(B, T, H, D, dtype)
    with threads_(threads):
        got = outputs_and_grads(path_chunk.pieces(lib, *ins, 0.3, c, levels), ins)
    want = outputs_and_grads(torch_pieces(*ins, 0.3, c, levels), ins)
    assert_close(got, want, ["qs", "k1", "P", "intra", "dq", "dk", "dw", "dbeta"], tol)


def test_layer_runs_the_kernel_and_matches_sequential(monkeypatch):
    calls = counter(monkeypatch, path_chunk, "pieces_qkv")
    torch.manual_seed(0)
    layer = rnnzoo.create("path_attention", d_model=16, num_heads=2, max_len=80,
                          chunk_size=64).double()
    x = torch.randn(2, 75, 16, dtype=torch.float64, requires_grad=True)
    ins = [x, *layer.parameters()]
    res = [outputs_and_grads(layer(x, mode=m)[0:1], ins) for m in ("chunk", "sequential")]
    assert calls[0] == 1
    assert_close(res[0], res[1], ["y", "dx"] + [f"d{n}" for n, _ in layer.named_parameters()],
                 1e-10)
