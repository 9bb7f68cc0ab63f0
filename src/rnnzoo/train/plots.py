"""curve.png of a run folder: the training loss against the step, and the headline
metric against the test length (needs the `plot` extra, matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

from rnnzoo.tasks import Task

PLOT = "curve.png"


def plot_run(out: Path, history: list[dict], task: Task, say=print) -> None:
    """Write `out`/curve.png from the metrics rows; a note instead without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("note: matplotlib is not installed (pip install 'rnnzoo[plot]'); no curve.png")
        return
    losses = [(r["step"], r["loss"]) for r in history if "loss" in r and "eval" not in r]
    evals = [r for r in history if "eval" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if losses:
        axes[0].plot(*zip(*losses))
    axes[0].set(xlabel="step", ylabel="training loss", title=f"{task.name}: learning curve")
    axes[0].set_yscale("log")
    if evals:
        keys = list(evals[-1]["eval"])
        values = [evals[-1]["eval"][k][task.metric] for k in keys]
        axes[1].plot(range(len(keys)), values, marker="o")
        axes[1].set_xticks(range(len(keys)), keys)
    axes[1].set(xlabel="test length", ylabel=task.metric, title="final evaluation")
    fig.tight_layout()
    tmp = out / f".{PLOT}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out / PLOT)
