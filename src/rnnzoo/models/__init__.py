"""Blocks, stacks, heads, generation and hybrids built from registered layers."""
