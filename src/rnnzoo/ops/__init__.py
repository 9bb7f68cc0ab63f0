"""Math kernels on tensors, no nn.Module: scan (diagonal), chunk (matrix state), newton."""
