"""`rnnzoo bench` with the peer libraries' baselines: imports every adapter module of
benchmarks/peers (each registers its baselines in `rnnzoo.bench.BASELINES`), then runs the
bench command line with the same arguments.

    PYTHONPATH=src python benchmarks/layers.py --layers mamba,gla,lstm --lengths 512,2048

A peer that is not installed (see .ci/install-peers) shows as a skipped row.
"""

import sys

from rnnzoo.bench import command
from rnnzoo.registry import import_all

if __name__ == "__main__":
    import_all("peers")  # this folder is sys.path[0]
    sys.exit(command())
