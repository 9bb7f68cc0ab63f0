"""Token mixers with the layer protocol; every module here is registered on first use."""

from rnnzoo.layers.base import RecurrentLayer

__all__ = ["RecurrentLayer"]
