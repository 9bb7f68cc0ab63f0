"""A grid of runs and its comparison table: `rnnzoo suite` and `rnnzoo demo`.

    rnnzoo suite --tasks parity,mqar --layers lstm,mingru --lrs 1e-3,3e-3 --out runs/suite

Every (task, layer, lr) is one `rnnzoo train` run in OUT/TASK/LAYER/lrLR; a run
whose final.json exists with the same settings is skipped, so an interrupted
suite continues where it stopped; one with other settings is refused (one line)
unless `--overwrite` retrains it. A run whose loss diverges (NaN) is reported
and left out of the table; the others go on. The table reports, for each task and layer, the best value over the
learning rates (state-space models are sensitive to it): OUT/results.csv (every
run), OUT/table.md and OUT/heatmap.png.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from pathlib import Path

from rnnzoo.io import atomic_write_text, parse_json, read_text
from rnnzoo.registry import get_layer_info, list_layers
from rnnzoo.tasks import list_tasks, task_class, task_options
from rnnzoo.train import FINAL, TrainConfig, train
from rnnzoo.train.checkpoints import first_difference, saved_config
from rnnzoo.train.command import add_model_arguments, config_from_args, parse_options, summary_lines
from rnnzoo.train.loop import NonFiniteLoss


def _names(text: str, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--{what} must list at least one name, got {text!r}")
    return names


def _lrs(text: str) -> list[float]:
    try:
        lrs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lrs must be comma-separated numbers, got {text!r}") from None
    if not lrs or any(not 0 < v <= 10 for v in lrs):
        raise ValueError(f"--lrs must be numbers in (0, 10], got {text!r}")
    return lrs


def run_dir(out: Path, task: str, layer: str, lr: float) -> Path:
    return out / task / layer / f"lr{lr:g}"


def _done_already(config: TrainConfig, overwrite: bool) -> bool:
    """Whether config.out holds this run, finished; another finished run there is refused
    unless `overwrite`."""
    folder = Path(config.out)
    if not (folder / FINAL).is_file():
        return False
    saved = saved_config(folder)
    diff = first_difference(saved, config) if saved else ("settings", "unknown", "these")
    if diff is None:
        return True
    if overwrite:
        return False
    name, old, new = diff
    raise ValueError(f"{folder} holds a finished run with other settings ({name}={old!r}, this "
                     f"suite has {name}={new!r}); --overwrite retrains it, or choose another --out")


def _final_record(path: Path) -> dict:
    """A finished run's final.json; a damaged one is one line naming it."""
    record = parse_json(read_text(path), path)
    need = {"task": str, "layer": str, "lr": (int, float), "metric": str,
            "value": (int, float)}
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t)
                                               for k, t in need.items()):
        raise ValueError(f"{path} is damaged: it needs {', '.join(need)}; delete it (or use "
                         f"--overwrite) to train that run again")
    return record


def run_grid(configs: list[TrainConfig], out: Path, quiet: bool = False,
             overwrite: bool = False) -> list[dict]:
    """Train every config (skipping finished ones); returns the final records of those
    that did not diverge."""
    records = []
    for i, config in enumerate(configs, 1):
        config.out = str(run_dir(out, config.task, config.layer, config.lr))
        label = f"[{i}/{len(configs)}] {config.task} / {config.layer} / lr {config.lr:g}"
        if _done_already(config, overwrite):
            record = _final_record(Path(config.out) / FINAL)
            print(f"{label}: done already ({record['metric']} {record['value']:.4f}), skipped")
        else:
            print(f"{label}", flush=True)
            try:
                record = train(config, quiet=quiet, overwrite=overwrite)
            except NonFiniteLoss as e:
                print(f"{label}: diverged, left out of the table: {e}", flush=True)
                continue
            print(f"{label}: {record['metric']} {record['value']:.4f} in {record['seconds']:.1f} s",
                  flush=True)
            for line in summary_lines(record):
                if line.startswith("warning:"):
                    print(f"{label}: {line}")
        records.append(record)
    return records


def best_over_lrs(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(task, layer) -> the record with the best headline value over learning rates."""
    best = {}
    for r in records:
        key = (r["task"], r["layer"])
        sign = 1 if higher_is_better(r) else -1
        if key not in best or sign * r["value"] > sign * best[key]["value"]:
            best[key] = r
    return best


def higher_is_better(record: dict) -> bool:
    """Whether the record's headline metric improves upward: as the record says, or
    (a run written before records said so) as its task's class says."""
    if "higher_is_better" in record:
        return bool(record["higher_is_better"])
    return task_class(record["task"]).higher_is_better


def tables(records: list[dict]) -> tuple[str, str]:
    """(Markdown table: layers x tasks, best over lrs; CSV of every run)."""
    best = best_over_lrs(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    layers = list(dict.fromkeys(r["layer"] for r in records))
    metric = {r["task"]: r["metric"] for r in records}
    head = "| layer | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " |"
    rows = [head, "|---" * (len(tasks) + 1) + "|"]
    for layer in layers:
        cells = []
        for t in tasks:
            r = best.get((t, layer))
            cells.append("" if r is None else f"{r['value']:.3f} (lr {r['lr']:g})")
        rows.append(f"| `{layer}` | " + " | ".join(cells) + " |")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["task", "layer", "lr", "metric", "value", "steps", "seconds", "parameters",
                "per_length"])
    for r in records:
        per = ";".join(f"{k}={v[r['metric']]:.4f}" for k, v in r["eval"].items())
        w.writerow([r["task"], r["layer"], r["lr"], r["metric"], f"{r['value']:.6f}", r["steps"],
                    f"{r['seconds']:.2f}", r.get("parameters", ""), per])
    return "\n".join(rows) + "\n", buf.getvalue()


def heatmap(records: list[dict], path: Path) -> bool:
    """A layers x tasks heatmap of the best values; False (with a note) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install 'rnnzoo[plot]'); no heatmap.png")
        return False
    import numpy as np
    best = best_over_lrs(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    layers = list(dict.fromkeys(r["layer"] for r in records))
    grid = np.full((len(layers), len(tasks)), np.nan)
    for (t, layer), r in best.items():
        grid[layers.index(layer), tasks.index(t)] = r["value"]
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 0.5 * len(layers) + 1.5))
    ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(layers)), layers)
    for i in range(len(layers)):
        for j in range(len(tasks)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w")
    ax.set_title("best over learning rates")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    return True


def write_report(records: list[dict], out: Path) -> str:
    md, table_csv = tables(records)
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "results.csv", table_csv)
    heatmap(records, out / "heatmap.png")
    return md


# -- rnnzoo suite ---------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--layers", dest="layer_names", required=True,
                   help="comma-separated layer names, or 'all' (the depth is --depth)")
    p.add_argument("--lrs", default="1e-3", help="comma-separated learning rates")
    p.add_argument("--out", default="runs/suite", help="folder of the runs and the tables")
    p.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain runs whose folders hold other settings (without it they are "
                        "refused); finished runs with the same settings are still skipped")
    add_model_arguments(p)


def main(args) -> None:
    tasks = _names(args.tasks, "tasks")
    for t in tasks:
        if t not in list_tasks():
            raise ValueError(f"unknown task {t!r}; tasks: {', '.join(list_tasks())}")
    layers = [i.name for i in list_layers()] if args.layer_names == "all" \
        else _names(args.layer_names, "layers")
    for layer in layers:
        get_layer_info(layer)
    lrs = _lrs(args.lrs)
    for key in parse_options(args.task_option, "task-option"):
        if not any(key in task_options(t) for t in tasks):
            raise ValueError(f"--task-option {key!r} is not an option of any of {tasks}")
    configs = []
    for t in tasks:
        for layer in layers:
            for lr in lrs:
                c = config_from_args(args, t, layer, lr, None)
                c.task_options = {k: v for k, v in c.task_options.items() if k in task_options(t)}
                configs.append(c.validate())
    out = Path(args.out)
    t0 = time.perf_counter()
    records = run_grid(configs, out, quiet=args.quiet, overwrite=args.overwrite)
    if not records:
        raise ValueError(f"every run diverged (NaN loss); nothing to tabulate in {out}")
    md = write_report(records, out)
    print(f"\n{md}\n{len(records)} runs in {time.perf_counter() - t0:.1f} s; "
          f"{out / 'table.md'}, {out / 'results.csv'}")


# -- rnnzoo demo ----------------------------------------------------------------------------------
DEMO_CANDIDATES = ("lstm", "mingru", "mamba", "deltanet", "attention")


def demo_layers() -> list[str]:
    registered = {i.name for i in list_layers()}
    return [n for n in DEMO_CANDIDATES if n in registered]


def demo_configs(layers: list[str], seed: int = 0) -> list[TrainConfig]:
    """Parity (train 3-40, test 64 and 128; scaled accuracy) and MQAR (V=64, L=32, K=4).

    Sized to run in about a minute on 2 CPU cores for five layers; each run stops
    early once its metric reaches 0.99.
    """
    common = dict(batch_size=32, lr=3e-3, eval_every=100, log_every=100, target=0.99,
                  seed=seed, threads=1)
    configs = []
    for layer in layers:
        configs.append(TrainConfig(task="parity", layer=layer, num_layers=1, d_model=32, steps=300,
                                   task_options=dict(test_lengths=(64, 128)), eval_batches=4,
                                   **common))
        configs.append(TrainConfig(task="mqar", layer=layer, num_layers=2, d_model=64, steps=400,
                                   task_options=dict(vocab_size=64, seq_len=32, num_pairs=4),
                                   eval_batches=2, **common))
    return configs


def add_demo_arguments(p) -> None:
    p.add_argument("--layers", dest="layer_names",
                   help=f"comma-separated layers (default: the registered ones of "
                        f"{', '.join(DEMO_CANDIDATES)})")
    p.add_argument("--out", help="folder for the runs (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")


def demo_main(args) -> None:
    layers = _names(args.layer_names, "layers") if args.layer_names else demo_layers()
    for layer in layers:
        get_layer_info(layer)
    print(f"rnnzoo demo: {', '.join(layers)} on parity (trained on lengths 3-40, tested on 64 "
          f"and 128; scaled accuracy) and MQAR (vocabulary 64, length 32, 4 key-value pairs; "
          f"accuracy)\n", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        records = run_grid([c.validate() for c in demo_configs(layers, args.seed)], out,
                           quiet=True)
        md, _ = tables(records)
        if args.out:
            write_report(records, out)
    print(f"\n{md}\nscaled accuracy: 0 = chance, 1 = perfect. {len(records)} runs in "
          f"{time.perf_counter() - t0:.1f} s")

