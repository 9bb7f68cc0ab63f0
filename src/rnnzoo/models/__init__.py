"""Blocks, stacks, heads, generation and hybrids built from registered layers."""

from rnnzoo.models.blocks import Block, GatedMLP, RMSNorm
from rnnzoo.models.checkpoint import load, save
from rnnzoo.models.stack import ModelConfig, SequenceModel, build_model

__all__ = ["Block", "GatedMLP", "RMSNorm", "ModelConfig", "SequenceModel", "build_model", "load",
           "save"]
