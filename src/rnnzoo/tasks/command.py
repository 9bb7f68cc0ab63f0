"""`rnnzoo tasks`: every registered task, its family, and each option's meaning and default.

The meaning of an option comes from its task class's `option_help` (a dict, for
options only that task has), else from OPTION_HELP here, keyed by (task, option)
or by the option name that many tasks share. Every option of every registered
task has one (tests/test_cli.py checks).
"""

from __future__ import annotations

import inspect

from rnnzoo.registry import TASKS
from rnnzoo.tasks import list_tasks, task_class, task_options

OPTION_HELP = {
    "test_lengths": "sequence lengths of the test split (comma list); each is scored",
    "train_lengths": "MIN,MAX: training lengths, drawn uniformly",
    "train_length": "length of the training sequences",
    "supervise": "'all': train on the answer of every prefix; 'last': on the final one only",
    "vocab_size": "vocabulary size",
    "seq_len": "sequence length",
    "num_pairs": "key-value pairs per sequence",
    "power_a": "power-law exponent of the gaps between a key and its query",
    "num_tokens": "data tokens to copy",
    "num_colors": "number of distinct data tokens",
    "modulus": "the modulus of the arithmetic",
    "cycle": "number of positions on the cycle",
    "alphabet": "number of symbols",
    "max_depth": "deepest nesting of an operator tree",
    "max_args": "most arguments of an operator",
    "min_length": "shortest sequence, in tokens",
    "max_length": "longest sequence, in tokens",
    "op_p": "probability that a node below the root is an operator",
    "path": "the data file (also: --data PATH); the README describes its format",
    ("mqar", "test_lengths"): "sequence lengths of the test split (comma list); none: seq_len",
    ("text", "mode"): "'byte': bytes (256 symbols); 'char': the file's characters (UTF-8)",
    ("text", "seq_len"): "characters (bytes) per training sequence",
    ("text", "val_fraction"): "the last fraction of the file, held out for testing",
    ("text", "pack"): "true: training batches of whole documents (split at blank lines) packed "
                      "without padding, the state restarting at each (cu_seqlens)",
    ("classify", "test_fraction"): "fraction of the rows held out for testing (at random)",
    ("classify", "seed"): "seed of the random train/test split",
    ("forecast", "window"): "past steps the model reads",
    ("forecast", "horizon"): "future steps it predicts",
    ("forecast", "season"): "period of the seasonal-naive baseline (1: repeat the last value)",
    ("forecast", "test_fraction"): "the last fraction of the series, held out for testing",
    ("forecast", "test_path"): "a second CSV continuing the series: the test part",
    ("forecast", "norm"): "'revin': each window by its own mean and std; 'global': the series'",
    ("forecast", "difference"): "true: the model reads and predicts first differences",
    ("classify", "test_path"): "a second file in the same format: the test split",
    ("regress", "targets"): "the last `targets` columns are the target (a vector if > 1)",
    ("regress", "test_fraction"): "fraction of the rows held out for testing (at random)",
    ("regress", "seed"): "seed of the random train/test split",
    ("regress", "test_path"): "a second file in the same format: the test split",
}


def option_defaults(name: str) -> dict:
    """{option: default} of task `name`, in task_options' order ('required' if none)."""
    fixed = getattr(TASKS[name].cls, "keywords", {})
    out = {}
    for cls in task_class(name).__mro__:
        if cls is not object and "__init__" in vars(cls):
            for p in inspect.signature(cls.__init__).parameters.values():
                if p.name in task_options(name) and p.name not in out and p.name not in fixed:
                    out[p.name] = "required" if p.default is p.empty else p.default
    return out


def option_help(name: str, option: str) -> str | None:
    own = getattr(task_class(name), "option_help", {})
    return own.get(option) or OPTION_HELP.get((name, option)) or OPTION_HELP.get(option)


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_arguments(p) -> None:
    p.add_argument("names", nargs="*", metavar="TASK", help="only these tasks (default: all)")


def main(args) -> None:
    names = args.names or list_tasks()
    for n in names:
        if n not in TASKS:
            raise ValueError(f"unknown task {n!r}; tasks: {', '.join(list_tasks())}")
    for n in names:
        cls = task_class(n)
        doc = (vars(cls).get("__doc__") or "").strip().split("\n")[0]
        print(f"{n}  ({TASKS[n].family}; metric {cls.metric}){':  ' + doc if doc else ''}")
        defaults = option_defaults(n)
        width = max((len(o) for o in defaults), default=0)
        for option, default in defaults.items():
            print(f"  {option:<{width}}  {option_help(n, option) or '?'} "
                  f"(default: {_shown(default)})")
    print("set an option with --task-option NAME=VALUE; file formats: README.md, 'Task files'")
