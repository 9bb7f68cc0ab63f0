"""curve.png of a run folder (needs the `plot` extra, matplotlib). Up to three panels:

    training loss vs step        in the unit its label names: cross-entropy in nats,
                                 bits per symbol for text (as its metric), MSE for regression
    metric vs step               the periodic (sampled) evaluation, one line per test length,
                                 and the final whole-split value as a marker
    metric vs test length        the final evaluation on the whole test split

A panel with fewer than two points is left out (a single dot says nothing);
`panels()` builds them without matplotlib.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from rnnzoo.tasks import Task

PLOT = "curve.png"


def loss_unit(task: Task) -> tuple[str, float]:
    """(label of the training loss, factor from the loss as computed to that unit)."""
    if task.kind == "regress":
        return "training loss (MSE)", 1.0
    if task.metric == "bpc":
        return "training loss (bits per symbol)", 1 / math.log(2)
    return "training loss (cross-entropy, nats)", 1.0


def panels(history: list[dict], task: Task, final: dict | None = None) -> list[dict]:
    """[{"title", "xlabel", "ylabel", "log", "series": [(label, xs, ys, style)]}], each with
    at least two points."""
    out = []
    ylabel, factor = loss_unit(task)
    losses = [(r["step"], r["loss"] * factor) for r in history if "loss" in r and "eval" not in r]
    out.append(dict(title=f"{task.name}: training loss", xlabel="step", ylabel=ylabel,
                    log=all(v > 0 for _, v in losses),
                    series=[("training batches", *_xy(losses), "-")]))
    evals = [r for r in history if "eval" in r]
    keys = list(evals[-1]["eval"]) if evals else []
    series = [(f"length {k}" if k != "test" else "test", *_xy(
        [(r["step"], r["eval"][k][task.metric]) for r in evals if k in r["eval"]]), "-o")
        for k in keys]
    if final and series:
        series.append(("final, whole test split", [final["steps"]] * len(final["eval"]),
                       [m[task.metric] for m in final["eval"].values()], "k*"))
    out.append(dict(title=f"{task.metric} during training (sampled evaluation)", xlabel="step",
                    ylabel=task.metric, log=False, series=series))
    if final and len(final["eval"]) > 1:
        names = list(final["eval"])
        out.append(dict(title="final, whole test split", xlabel="test length", ylabel=task.metric,
                        log=False, xticks=names, series=[(
                            "model", list(range(len(names))),
                            [final["eval"][k][task.metric] for k in names], "-o")]))
    return [p for p in out if max((len(s[1]) for s in p["series"]), default=0) >= 2]


def _xy(points):
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(out: Path, history: list[dict], task: Task, say=print,
             final: dict | None = None, model=None) -> None:
    """Write `out`/curve.png from the metrics rows and the final record, plus the task's
    own panel of the trained `model`'s predictions where it has one (`plot_predictions`:
    forecast vs actual and its baselines); a note instead without matplotlib or without
    two points to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("note: matplotlib is not installed (pip install 'rnnzoo[plot]'); no curve.png")
        return
    drawn = panels(history, task, final)
    if not drawn:
        say("note: too few logged points for curve.png (lower --log-every / --eval-every)")
        return
    own = model is not None and hasattr(task, "plot_predictions")
    n = len(drawn) + own
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), squeeze=False)
    if own:
        task.plot_predictions(axes[0][-1], model)
    for ax, panel in zip(axes[0], drawn):
        for label, xs, ys, style in panel["series"]:
            ax.plot(xs, ys, style, label=label, markersize=4)
        if "xticks" in panel:
            ax.set_xticks(range(len(panel["xticks"])), panel["xticks"])
        if panel["log"]:
            ax.set_yscale("log")
        if len(panel["series"]) > 1:
            ax.legend(fontsize=7)
        ax.set(xlabel=panel["xlabel"], ylabel=panel["ylabel"], title=panel["title"])
    fig.tight_layout()
    tmp = out / f".{PLOT}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out / PLOT)
