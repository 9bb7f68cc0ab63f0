"""Adapters to peer libraries (torchrecurrent, flash-linear-attention, mamba_ssm, xlstm),
used only as speed baselines by `rnnzoo bench` and as oracles by the tests.

Nothing in rnnzoo's layers imports this package. Each module here registers
baselines with `rnnzoo.bench.register_baseline`; a factory imports its peer
when it is called and raises ImportError when the peer is not installed, which
the bench table reports as skipped.
"""
