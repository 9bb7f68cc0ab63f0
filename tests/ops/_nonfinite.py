"""The check the op tests share: a NaN or inf input at step t of one sequence never reaches
an output before t, nor the other sequences (rnnzoo.ops.finite)."""

from __future__ import annotations

import torch

FILLS = (float("nan"), float("inf"), float("-inf"))


def _flat(s):
    return list(s) if isinstance(s, (tuple, list)) else [s]


def check_causal(op, args, timed, steps, *, kwargs=None, tol=1e-9, fills=FILLS):
    """op(*args, **kwargs) -> (o (B, T, ...), final state). For each index in `timed` (args
    that are (B, T, ...)), each step t and each fill: args[i][0, t] gets one non-finite entry;
    outputs of sequence 0 before t must be finite and equal the clean run's, and sequence 1's
    outputs and final state must be the clean run's."""
    kwargs = kwargs or {}
    with torch.no_grad():
        o_clean, s_clean = op(*args, **kwargs)
        for i in timed:
            for t in steps:
                for fill in fills:
                    bad = list(args)
                    bad[i] = args[i].clone()
                    bad[i][0, t].view(-1)[0] = fill
                    o, s = op(*bad, **kwargs)
                    where = f"arg {i}, step {t}, {fill}"
                    assert bool(torch.isfinite(o[0, :t]).all()), f"non-finite before t: {where}"
                    assert (o[0, :t] - o_clean[0, :t]).abs().max().item() <= tol, where
                    assert (o[1] - o_clean[1]).abs().max().item() <= tol, where
                    for a, b in zip(_flat(s), _flat(s_clean)):
                        assert (a[1] - b[1]).abs().max().item() <= tol, where
