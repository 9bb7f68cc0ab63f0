"""Adapters to peer libraries (torchrecurrent, flash-linear-attention, mamba_ssm, xlstm),
used only as speed baselines by the benchmarks and as oracles by the tests. They
live outside the installed package: pytest and the scripts under benchmarks/ put
this folder on sys.path, and `python benchmarks/layers.py` runs `rnnzoo bench` with
all of them imported. Each module here registers baselines with
`rnnzoo.bench.register_baseline`; a factory imports its peer when it is called and
raises ImportError when the peer is not installed, which the bench table reports
as skipped.
"""
