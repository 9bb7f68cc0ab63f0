"""Token mixers with the layer protocol (`RecurrentLayer`, layers/base.py). Every public
module here registers its layers; `registry.LAYERS` imports them all on its first read,
so nothing needs importing for its side effect."""

from rnnzoo.layers.base import RecurrentLayer

__all__ = ["RecurrentLayer"]
