"""Triton kernels behind the signatures of the PyTorch ops (the PyTorch ops stay the reference).

    scan.linear_scan                       = rnnzoo.ops.scan.linear_scan
    selective_scan.selective_scan          = rnnzoo.layers.mamba.selective_scan

Importing a submodule imports triton and decorates its kernels; `TRITON_INTERPRET=1`
must be set before that import for the kernels to run on CPU tensors (the interpreter).
`rnnzoo.ops.backend.use_triton` says when to call them; this package itself does not
import triton.
"""
