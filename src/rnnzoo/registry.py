"""Name -> layer class, with the metadata every layer declares.

A layer module registers its class with the `register` decorator::

    @register("mingru", family="diagonal", paper="Feng et al. 2024, arXiv:2410.01201",
              tiny=dict(d_model=8))
    class MinGRU(RecurrentLayer): ...

Every module under `rnnzoo.layers` is imported the first time the registry is
read, so a new layer file is found without editing any list. `tiny` holds the
options of a small instance used by the conformance suite (and `d_model`);
`tolerances` may loosen the suite's bfloat16 tolerance where the layer's maths
is less stable in low precision.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerInfo:
    """What `list_layers()` returns for each registered layer."""

    name: str
    family: str
    paper: str
    modes: tuple[str, ...]
    cls: type = field(repr=False, compare=False)
    tiny: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    tolerances: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    @property
    def reference_mode(self) -> str:
        return self.modes[0]


FAMILIES = ("classic", "diagonal", "matrix", "attention", "hybrid")
_REGISTRY: dict[str, LayerInfo] = {}
_discovered = False


def register(name: str, *, family: str, paper: str, tiny: dict | None = None,
             tolerances: dict | None = None):
    """Class decorator: register a `RecurrentLayer` subclass under `name`."""
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"layer name must be lowercase letters, digits and '_', got {name!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorate(cls):
        if name in _REGISTRY and _REGISTRY[name].cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"layer name {name!r} is already registered by {_REGISTRY[name].cls}")
        modes = tuple(cls.modes)
        if not modes:
            raise ValueError(f"{cls.__name__}.modes is empty: it needs at least its reference mode")
        cls.name = name
        _REGISTRY[name] = LayerInfo(name, family, paper, modes, cls, dict(tiny or {}),
                                    dict(tolerances or {}))
        return cls

    return decorate


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import rnnzoo.layers as pkg

    for module in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        if not module.startswith("_"):
            importlib.import_module(f"rnnzoo.layers.{module}")


def list_layers(family: str | None = None) -> list[LayerInfo]:
    """All registered layers (name, family, paper, modes), sorted by family then name."""
    _discover()
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    infos = [i for i in _REGISTRY.values() if family in (None, i.family)]
    return sorted(infos, key=lambda i: (FAMILIES.index(i.family), i.name))


def get_layer_info(name: str) -> LayerInfo:
    _discover()
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown layer {name!r}; registered layers: {valid}")
    return _REGISTRY[name]


def create(name: str, d_model: int, **options):
    """Build the layer registered as `name` for inputs of width `d_model`."""
    return get_layer_info(name).cls(d_model=d_model, **options)


def markdown_table() -> str:
    """The README's layer table, generated from the registry."""
    rows = ["| layer | family | modes (reference first) | paper |", "|---|---|---|---|"]
    for i in list_layers():
        rows.append(f"| `{i.name}` | {i.family} | {', '.join(i.modes)} | {i.paper} |")
    return "\n".join(rows)


def write_readme(path: str = "README.md") -> None:
    """Regenerate the layer table between the README's `layers` markers."""
    import re
    from pathlib import Path

    from rnnzoo.io import atomic_write_text

    text = Path(path).read_text()
    new, n = re.subn(r"<!-- layers:start -->.*?<!-- layers:end -->",
                     lambda m: f"<!-- layers:start -->\n{markdown_table()}\n<!-- layers:end -->",
                     text, flags=re.S)
    if n != 1:
        raise ValueError(f"{path} must hold one <!-- layers:start --> ... <!-- layers:end --> block")
    atomic_write_text(path, new)

