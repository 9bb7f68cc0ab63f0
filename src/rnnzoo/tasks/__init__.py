"""Benchmark tasks: generators and data loaders."""
