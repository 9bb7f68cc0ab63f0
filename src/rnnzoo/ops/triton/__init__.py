"""Triton kernels behind the signatures of the PyTorch ops (the PyTorch ops stay the reference).

    scan.linear_scan                     = ops.scan.linear_scan (fwd + bwd, real; complex as
                                           two real planes)
    selective_scan.selective_scan        = layers.mamba.selective_scan, mode "scan" (fused:
                                           discretisation in the kernel, states recomputed)
    chunk_linear.gated_linear_attention  = ops.chunk.linear.gated_linear_attention (none /
                                           scalar / vector decay, the RWKV-6 bonus; fwd + bwd)
    chunk_mlstm.mlstm                    = ops.chunk.linear.mlstm (fwd + bwd)
    chunk_delta.delta_rule               = ops.chunk.delta.delta_rule (gated, any beta; fwd +
                                           bwd); DeltaProduct reaches it through delta_product
    chunk_rwkv7.rwkv7                    = ops.chunk.delta.rwkv7 (fwd + bwd)
    rnn.lstm_sequence / gru_sequence /   = the `fused` mode of the lstm (no peepholes, no
        slstm_sequence                     projection), gru and slstm cells: all T steps in
                                           one launch each way

The switch is `rnnzoo.ops.backend`: each op above asks `backend.use_triton(*tensors)` and
calls its kernel for CUDA tensors when triton imports (float64 stays on PyTorch: the
kernels refuse it). `RNNZOO_BACKEND=torch` or `backend.force("torch")` forces the PyTorch
path; `backend.force("triton")` forces the kernels, on CPU tensors too (the tests, under
TRITON_INTERPRET=1). The LSTM, GRU and sLSTM kernels run only when forced: on an H200
(benchmarks/gpu.py, B=8 T=2048 d_model=512, fwd+bwd) they took 2897, 2248 and 2931 ms
against cuDNN's 65 and 61 ms and sLSTM's PyTorch loop's 1198 ms.

Importing a submodule imports triton and decorates its kernels; `TRITON_INTERPRET=1`
must be set before that import for the kernels to run on CPU tensors (the interpreter).
The ops import these submodules only when they call them: `import rnnzoo` never imports
triton, and this package itself does not either.

Higher-order gradients: each op takes `plain`, its PyTorch form with the op's own arguments
and returns (the caller passes the reference it is tested against: a module here may not
import it, ops.chunk and ops.scan import these). Under create_graph=True a node's `twice`
replays it through autograd over the node's original inputs (`replay` below); without it
the node raises the first-order error (docs/design.md, higher-order gradients).
"""

from rnnzoo.ops import first_order


def replay(node: str, plain, fn, args, grads, needs):
    """A Triton node's `twice`: first_order.replay(fn, args, grads, needs), fn the node's
    forward through `plain` (the op's PyTorch form its caller passed); the first-order error
    when the caller passed none."""
    first_order.plain_given(plain, node)
    return first_order.replay(fn, args, grads, needs)
