"""ListOps (Nangia & Bowman 2018, arXiv:1804.06028), with the generator of the Long
Range Arena (Tay et al. 2021, arXiv:2011.04006): nested prefix expressions
such as  [MAX 2 9 [MIN 4 7 ] 0 ]  whose value (0-9) is the label.

    MIN, MAX, MED (median, rounded down as in LRA: int(np.median)), SM (sum mod 10)

A tree has at most `max_depth` levels and `max_args` arguments per operator
(LRA: 10 and 10); sequences outside [min_length, max_length] tokens are
rejected and drawn again. The answer is read at the last token; shorter
sequences in a batch are right-padded.
"""

from __future__ import annotations

import numpy as np

from rnnzoo.checks import int_in, real
from rnnzoo.tasks.base import IGNORE, Task, task, tokens_batch

OPS = ("MIN", "MAX", "MED", "SM")
TOKENS = [str(d) for d in range(10)] + [f"[{op}" for op in OPS] + ["]", "<pad>"]
CLOSE, PAD = TOKENS.index("]"), TOKENS.index("<pad>")


def evaluate(op: str, args: list[int]) -> int:
    if op == "MIN":
        return min(args)
    if op == "MAX":
        return max(args)
    if op == "MED":
        return int(np.median(args))
    return sum(args) % 10


@task("listops", family="hierarchical")
class ListOps(Task):
    output_dim, chance = 10, 0.1
    vocab_size = len(TOKENS)
    test_lengths = (None,)

    def __init__(self, max_depth: int = 6, max_args: int = 5, min_length: int = 10,
                 max_length: int = 100, op_p: float = 0.25):
        self.max_depth = int_in("max_depth", max_depth)
        self.max_args = int_in("max_args", max_args, lo=2)
        self.min_length = int_in("min_length", min_length)
        self.max_length_ = int_in("max_length", max_length, lo=self.min_length)
        self.op_p = real("op_p", op_p, 0, 1, lo_open=True, hi_open=True)

    def options(self):
        return dict(max_depth=self.max_depth, max_args=self.max_args,
                    min_length=self.min_length, max_length=self.max_length_)

    def max_length(self):
        return self.max_length_

    def _tree(self, rng, depth):
        """(tokens, value). As LRA: below the root, an operator with probability op_p (LRA's
        VALUE_P) while depth remains, else a digit; the root is always an operator."""
        if depth >= self.max_depth or (depth > 0 and rng.random() >= self.op_p):
            v = int(rng.integers(0, 10))
            return [v], v
        op = OPS[int(rng.integers(0, len(OPS)))]
        tokens, values = [TOKENS.index(f"[{op}")], []
        for _ in range(int(rng.integers(2, self.max_args + 1))):
            t, v = self._tree(rng, depth + 1)
            tokens += t
            values.append(v)
        return tokens + [CLOSE], evaluate(op, values)

    def _one(self, rng):
        for _ in range(10000):
            tokens, value = self._tree(rng, 0)
            if self.min_length <= len(tokens) <= self.max_length_:
                return tokens, value
        raise ValueError(f"no ListOps tree of {self.min_length}-{self.max_length_} tokens with "
                         f"max_depth={self.max_depth}, max_args={self.max_args}; widen the bounds")

    def sample(self, rng, batch_size, length=None, split="train"):
        rows = [self._one(rng) for _ in range(batch_size)]
        T = max(len(t) for t, _ in rows)
        inputs = np.full((batch_size, T), PAD, dtype=np.int64)
        targets = np.full((batch_size, T), IGNORE, dtype=np.int64)
        for b, (tokens, value) in enumerate(rows):
            inputs[b, :len(tokens)] = tokens
            targets[b, len(tokens) - 1] = value
        return tokens_batch(inputs, targets)
