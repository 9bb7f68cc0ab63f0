"""Blocks, stacks, heads, generation and hybrids built from registered layers."""

from rnnzoo.models.block_recurrent import BlockRecurrentTransformer, build_block_recurrent
from rnnzoo.models.blocks import Block, GatedMLP, RMSNorm
from rnnzoo.models.checkpoint import load, save
from rnnzoo.models.dsr import DSRModel  # noqa: F401  (registers the dsr kind with load)
from rnnzoo.models.recurrent_depth import RecurrentDepth, build_recurrent_depth
from rnnzoo.models.stack import ModelConfig, SequenceModel, build_model
from rnnzoo.models.universal import UniversalTransformer, build_universal

__all__ = ["Block", "GatedMLP", "RMSNorm", "ModelConfig", "SequenceModel", "build_model", "load",
           "save", "BlockRecurrentTransformer", "RecurrentDepth", "UniversalTransformer",
           "build_block_recurrent", "build_recurrent_depth", "build_universal"]
