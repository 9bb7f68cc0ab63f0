"""The CPU speed table: every registered layer's `auto` mode, forward+backward, float32,
against torch.nn.LSTM(d_model, d_model) in the same process, with FLOPs and utilisation of
the measured matmul peak, at 1 and 2 threads (`rnnzoo bench --vs-lstm` with these defaults).

    PYTHONPATH=src python benchmarks/cpu.py                      # B=16 T=512 d_model=128
    PYTHONPATH=src python benchmarks/cpu.py --layers mamba,gla --threads 1

Any other `rnnzoo bench` argument passes through.
"""

import sys

from rnnzoo.bench import command

DEFAULTS = ["--vs-lstm", "--family", "all", "--batch", "16", "--lengths", "512",
            "--d-model", "128", "--repeat", "3", "--threads", "1,2"]

if __name__ == "__main__":
    sys.exit(command(DEFAULTS + sys.argv[1:]))  # later arguments win; --layers beats --family
