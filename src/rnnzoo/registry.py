"""One `Registry` for everything rnnzoo looks up by name: layers, cells, tasks, baselines.

A module registers what it defines with a decorator::

    @register("mingru", family="diagonal", paper="Feng et al. 2024, arXiv:2410.01201",
              tiny=dict(d_model=8))
    class MinGRU(RecurrentLayer): ...

A registry that names a package imports every public module of that package
(`import_all`) the first time it is read (`LAYERS` scans `rnnzoo.layers`,
`CELLS` `rnnzoo.cells`, `TASKS` `rnnzoo.tasks`), so a new file is found
without editing any list, and nothing needs importing for its side effect.
The imports are by name, at read time: this module sits on the lowest floor
and imports nothing of rnnzoo's above it. (The speed baselines of
`rnnzoo.bench.BASELINES` name no package: the harness registers torch's own,
and benchmarks/layers.py imports the peer adapters of benchmarks/peers.)

Every entry is an `Info`: name, the registered object (a class or factory),
and the metadata its kind uses (`family`, `paper`, `modes`; `tiny` holds the
options of a small instance used by the conformance suite; `tolerances` may
loosen the suite's bfloat16 or float32 tolerance (keys "bfloat16", "float32") where
the maths is less stable in low precision; `host_reads` a layer's cases -- a mode,
"step" or "lengths" -- that must read tensor values on the host, with the reason, from
the class's `host_reads`; `extra` anything else).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

FAMILIES = ("classic", "diagonal", "matrix", "attention")


@dataclass(frozen=True)
class Info:
    """One registered entry; what `list_layers()` returns for each layer."""

    name: str
    cls: Any = field(repr=False, compare=False)  # the class, or a factory
    family: str = ""
    paper: str = ""
    modes: tuple[str, ...] = ()
    tiny: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    tolerances: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    host_reads: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def reference_mode(self) -> str:
        return self.modes[0]


_NAME = r"[a-z0-9_]+"


def _origin(obj) -> tuple:
    """Where an object was defined: a module imported again (or reloaded) makes new objects
    of the same origin, which may re-register under their name."""
    if hasattr(obj, "__qualname__"):
        return getattr(obj, "__module__", None), obj.__qualname__
    return (id(obj),)


class UnknownName(ValueError, KeyError):
    """A name no registry entry has: a ValueError (for callers validating input) and a
    KeyError (for mapping code), printed as its message."""

    def __str__(self) -> str:
        return str(self.args[0])


def import_all(package: str) -> list[str]:
    """Import every public module (no leading '_') of the package named `package`, in
    name order, so that the registrations they hold run; returns their names."""
    pkg = importlib.import_module(package)
    names = sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
                   if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(name)
    return names


class Registry(Mapping):
    """name -> `Info` for one kind of thing (`kind` names it in errors); a read-only
    mapping (`reg[name]`, `name in reg`, `sorted(reg)`, `reg.values()`).

    `package`: the dotted name of a package whose public modules are imported on
    first read (None: entries are added explicitly). `check(info)` may reject an
    entry with ValueError before it is added. `names`: the pattern every name must
    match (default: lowercase letters, digits and '_')."""

    def __init__(self, kind: str, package: str | None = None,
                 check: Callable[[Info], None] | None = None, names: str = _NAME):
        self.kind = kind
        self.package = package
        self._check = check
        self._names = re.compile(names)
        self._entries: dict[str, Info] = {}
        self._discovered = package is None

    def add(self, info: Info) -> Info:
        """Add `info`; ValueError for a malformed name or a name held by an object of another
        origin (module and qualified name: a module imported again re-registers)."""
        if not isinstance(info.name, str) or not self._names.fullmatch(info.name):
            rule = "be lowercase letters, digits and '_'" if self._names.pattern == _NAME \
                else f"match {self._names.pattern}"
            raise ValueError(f"{self.kind} name must {rule}, got {info.name!r}")
        old = self._entries.get(info.name)
        if old is not None and _origin(old.cls) != _origin(info.cls):
            raise ValueError(f"{self.kind} name {info.name!r} is already registered by "
                             f"{old.cls!r}")
        if self._check is not None:
            self._check(info)
        self._entries[info.name] = info
        return info

    def remove(self, name: str) -> Info:
        """Take `name` out (tests that register a throw-away entry)."""
        return self._entries.pop(name)

    def register(self, name: str, **meta) -> Callable:
        """Decorator: add the decorated class or function under `name` with `meta`
        (the fields of `Info`)."""
        def decorate(obj):
            self.add(Info(name, obj, **meta))
            return obj
        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True  # first: a module being imported may read this registry
        try:
            import_all(self.package)
        except BaseException:
            self._discovered = False  # the next read raises the same error, not a short list
            raise

    def __getitem__(self, name: str) -> Info:
        """The entry `name`, or `UnknownName` listing the registered names."""
        self._discover()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                              f"{', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)


# -- layers -----------------------------------------------------------------------------

def _check_layer(info: Info) -> None:
    if info.family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {info.family!r}")
    if not info.modes:
        raise ValueError(f"{info.cls.__name__}.modes is empty: it needs at least its "
                         f"reference mode")


LAYERS = Registry("layer", "rnnzoo.layers", check=_check_layer)


def register(name: str, *, family: str, paper: str, tiny: dict | None = None,
             tolerances: dict | None = None):
    """Class decorator: register a `RecurrentLayer` subclass under `name`."""
    def decorate(cls):
        LAYERS.add(Info(name, cls, family=family, paper=paper, modes=tuple(cls.modes),
                        tiny=dict(tiny or {}), tolerances=dict(tolerances or {}),
                        host_reads=dict(getattr(cls, "host_reads", {}))))
        cls.name = name
        return cls
    return decorate


def list_layers(family: str | None = None) -> list[Info]:
    """All registered layers (name, family, paper, modes), sorted by family then name."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    infos = [i for i in LAYERS.values() if family in (None, i.family)]
    return sorted(infos, key=lambda i: (FAMILIES.index(i.family), i.name))


def get_layer_info(name: str) -> Info:
    return LAYERS[name]


def create(name: str, d_model: int, **options):
    """Build the layer registered as `name` for inputs of width `d_model`."""
    return LAYERS[name].cls(d_model=d_model, **options)


def markdown_table() -> str:
    """The README's layer table, generated from the registry."""
    rows = ["| layer | family | modes (reference first) | paper |", "|---|---|---|---|"]
    for i in list_layers():
        rows.append(f"| `{i.name}` | {i.family} | {', '.join(i.modes)} | {i.paper} |")
    return "\n".join(rows)


def write_readme(path: str = "README.md") -> None:
    """Regenerate the layer table between the README's `layers` markers."""
    from pathlib import Path

    from rnnzoo.io import atomic_write_text

    text = Path(path).read_text()
    new, n = re.subn(r"<!-- layers:start -->.*?<!-- layers:end -->",
                     lambda m: f"<!-- layers:start -->\n{markdown_table()}\n<!-- layers:end -->",
                     text, flags=re.S)
    if n != 1:
        raise ValueError(f"{path} must hold one <!-- layers:start --> ... <!-- layers:end --> block")
    atomic_write_text(path, new)


# -- cells and tasks ------------------------------------------------------------------------

CELLS = Registry("cell", "rnnzoo.cells")
TASKS = Registry("task", "rnnzoo.tasks")


def _check_grid_layer(info: Info) -> None:
    if not info.modes:
        raise ValueError(f"{info.cls.__name__}.modes is empty: it needs at least its "
                         f"reference mode")


GRID_LAYERS = Registry("2-D layer", "rnnzoo.grid", check=_check_grid_layer)  # rnnzoo.grid
