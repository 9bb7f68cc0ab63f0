"""ops.memory._grid, the chunk layout of the test-time memories' chunk forms: a batch whose
sequences all start at one offset is padded (on the CPU) into ceil((c + T) / C) chunks, any
other batch scattered into (T + 2C - 2) // C; both put step i of a sequence at c + i, zeros
elsewhere, and take it back from there. The chunk forms built on it equal their references
in the conformance suite (fresh and resumed states)."""

from __future__ import annotations

import pytest
import torch

from rnnzoo.ops.memory import _grid


@pytest.mark.parametrize("offsets,T,C,chunks", [([0, 0], 8, 4, 2), ([3, 3], 6, 4, 3),
                                                ([2, 2], 2, 4, 1), ([0, 3], 8, 4, 3)])
def test_grid_places_and_takes_each_sequence(offsets, T, C, chunks):
    c = torch.tensor(offsets)
    NT, first, last, place, take = _grid(c, T, C)
    assert NT == chunks
    assert last.tolist() == [(o + T - 1) // C for o in offsets]
    assert first == ((offsets[0] + T - 1) // C if len(set(offsets)) == 1 else (T - 1) // C)
    x = torch.randn(2, T, 3, 5)
    g = place(x)                                        # (B, H, NT*C, D)
    assert g.shape == (2, 3, NT * C, 5)
    for b, o in enumerate(offsets):
        torch.testing.assert_close(g[b, :, o:o + T].transpose(0, 1), x[b])
        assert not g[b, :, :o].any() and not g[b, :, o + T:].any()
    torch.testing.assert_close(take(g), x)
    gates = place(torch.rand(2, T, 3))                  # (B, T, H) -> (B, H, NT*C)
    assert gates.shape == (2, 3, NT * C)
