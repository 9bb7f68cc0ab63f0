"""Nonlinear cells: one step h_t = f(h_{t-1}, x_t), one file a family."""
