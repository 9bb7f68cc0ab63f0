"""Run a recurrence chunk by chunk so that memory does not grow with T x state.

Diagonal SSMs with a large state per channel (Mamba's d_state, GateLoop's
key x value state) would hold a (B, T, channels, state) tensor for the whole
sequence, several times over for the backward pass. `over_chunks` runs
`fn(h, *inputs_chunk) -> (y_chunk, h_last)` on consecutive time chunks, carrying
h, and under autograd checkpoints each chunk: only the chunk inputs and the
boundary states are kept, and each chunk's states are recomputed in the backward
pass (what the fused Mamba kernel does on GPU).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rnnzoo.ops import backend, sequence_parallel


def over_chunks(fn, h: torch.Tensor, inputs: tuple[torch.Tensor, ...], chunk_size: int):
    """y = cat over chunks of fn(h, *chunk); returns (y, h after the last chunk).

    inputs: tensors (B, T, ...) sliced along dim 1; `fn` may use parameters from its
    closure (gradients reach them through the checkpoint).
    """
    T = inputs[0].shape[1]
    if sequence_parallel.active():  # one chunk: each scan inside is a whole slice of the sequence
        chunk_size = T
    ys = []  # split, not t[:, s:s + L]: a slice's backward zero-fills the whole input
    for part in zip(*(t.split(chunk_size, 1) for t in inputs)):
        # not under torch.func, which refuses the checkpoint's saved-tensor hooks
        if torch.is_grad_enabled() and T > chunk_size and not backend.transforming():
            y, h = checkpoint(fn, h, *part, use_reentrant=False)
        else:
            y, h = fn(h, *part)
        ys.append(y)
    return (ys[0] if len(ys) == 1 else torch.cat(ys, 1)), h
