"""Training: `rnnzoo train --task TASK --layer NAME ...` and `train(TrainConfig(...))`.

    from rnnzoo.train import TrainConfig, train
    record = train(TrainConfig(task="parity", layer="lstm", num_layers=1, out="runs/x"))

One run = one folder (checkpoints.py lists its files). The modules:

    config.py       TrainConfig, its checks, the learning-rate schedule
    loop.py         train() and evaluate()
    checkpoints.py  the run folder: checkpoint, metrics, final record; --resume
    plots.py        curve.png
    dist.py         DistributedDataParallel under torchrun
    command.py      `rnnzoo train` (argparse and main)
    generate.py     `rnnzoo generate` (continue a prompt with a trained text model)
"""

from rnnzoo.train.checkpoints import CHECKPOINT, FINAL, METRICS, PLOT, TRAIN_CONFIG, RunFolder
from rnnzoo.train.config import TrainConfig, lr_at
from rnnzoo.train.loop import build, evaluate, make_optimizer, train, train_batch
from rnnzoo.train.plots import plot_run

__all__ = ["CHECKPOINT", "FINAL", "METRICS", "PLOT", "TRAIN_CONFIG", "RunFolder", "TrainConfig",
           "build", "evaluate", "lr_at", "make_optimizer", "plot_run", "train", "train_batch"]
