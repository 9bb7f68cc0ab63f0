"""The `rnnzoo` command. Each subcommand lives next to what it runs and brings
`add_arguments(parser)` and `main(args)`; this file only wires them up.

Exit codes: 0 done; 2 bad input (a name, an option, a path, a damaged file; one
line `rnnzoo CMD: error: ...`, no traceback); 1 a training run that diverged
(NaN or infinite loss; one line naming the step).
"""

from __future__ import annotations

import argparse
import sys


def _list_main(args) -> None:
    from rnnzoo.registry import list_layers, markdown_table, write_readme
    if args.write_readme:
        write_readme(args.write_readme)
        return
    if args.markdown:
        print(markdown_table())
        return
    if args.grid:  # the 2-D layers (rnnzoo.grid, docs/2d.md)
        from rnnzoo.registry import GRID_LAYERS
        infos = [GRID_LAYERS[n] for n in sorted(GRID_LAYERS)]
        for i in infos:
            print(f"{i.name:<8}  {','.join(i.modes):<30}  {i.paper}")
        print(f"{len(infos)} 2-D layers")
        return
    infos = list_layers(args.family)
    width = max((len(i.name) for i in infos), default=5)
    for i in infos:
        print(f"{i.name:<{width}}  {i.family:<9}  {','.join(i.modes):<28}  {i.paper}")
    print(f"{len(infos)} layers")


def _list_arguments(p) -> None:
    from rnnzoo.registry import FAMILIES
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument("--markdown", action="store_true", help="print the README's layer table")
    p.add_argument("--grid", action="store_true", help="list the 2-D layers instead (docs/2d.md)")
    p.add_argument("--write-readme", metavar="PATH", help="regenerate the layer table in PATH")


def _commands():
    """name -> (help, add_arguments, main)."""
    from rnnzoo import bench, suite
    from rnnzoo.tasks import command as tasks
    from rnnzoo.train import command as train
    from rnnzoo.train import generate
    return {
        "list": ("list the registered layers (name, family, modes, paper)", _list_arguments,
                 _list_main),
        "bench": ("time layers and modes against their baselines", bench.add_arguments,
                  bench.main),
        "tasks": ("list the tasks and their options", tasks.add_arguments, tasks.main),
        "train": ("train one model on one task; writes a run folder", train.add_arguments,
                  train.main),
        "generate": ("continue a text prompt with a trained text model (constant-size state)",
                     generate.add_arguments, generate.main),
        "suite": ("train a grid of layers x tasks x learning rates; table and heatmap",
                  suite.add_arguments, suite.main),
        "demo": ("the built-in comparison: small models on parity and MQAR, then the table",
                 suite.add_demo_arguments, suite.demo_main),
    }


class HelpFormatter(argparse.HelpFormatter):
    """--help shows every option's default: the help text's own "(default: ...)" where it
    has one (a computed default), else the value, "none", or "(required)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS \
                or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            return text
        if action.required:
            return f"{text} (required)".strip()
        shown = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {shown})".strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnzoo", description="Every recurrent sequence model, "
                                     "one contract: list, benchmark, train and compare.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, run) in _commands().items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        add_args(p)
        for action in p._actions:  # argparse prints nothing for help=None: the default at least
            if action.help is None and action.option_strings:
                action.help = "(default: none)" if action.default is None \
                    else "(default: %(default)s)"
        p.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    from rnnzoo.train.loop import NonFiniteLoss
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except NonFiniteLoss as e:  # the run diverged: not the input's fault, but one line too
        print(f"rnnzoo {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # bad names, options, paths, files: one clear line
        print(f"rnnzoo {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _one_line(e: Exception) -> str:
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        # raised by the system (PermissionError, ...): the path and the reason, not the errno
        return f"{e.filename}: {e.strerror.lower()}" if e.filename else e.strerror.lower()
    return " ".join(str(e).split("\n"))


if __name__ == "__main__":
    sys.exit(main())
