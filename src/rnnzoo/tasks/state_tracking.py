"""State tracking: parity, modular arithmetic, permutation composition.

The setting of Grazzi et al. 2025 ("Unlocking State-Tracking in Linear RNNs
Through Negative Eigenvalues", arXiv:2411.12537) and Merrill et al. 2024
("The Illusion of State in State-Space Models", arXiv:2404.08819): train on
lengths 3-40, test on 40-256; the metric is the accuracy of the final answer,
scaled so that chance is 0 and perfect is 1: (acc - chance) / (1 - chance).

By default every prefix is supervised (its running answer is the target at
each position, `supervise="all"`, as in Merrill et al.'s word problems);
`supervise="last"` trains on the final answer only.

- parity: bits; the answer is their sum mod 2.
- mod_arith: d op d op ... d with digits mod m and ops + - *, evaluated left to
  right (a regular language: a finite automaton tracks the running value).
- mod_arith_brackets: fully bracketed expressions ((d op d) op d) ...,
  a context-free language; only the final answer is defined and scored.
  Lengths are rounded down to 4k + 1 tokens.
- s3, s5, a5: tokens are group elements; the answer is their composition
  (the word problem, NC1-complete for S5 and A5; Barrington 1989).
"""

from __future__ import annotations

import itertools

import numpy as np

from rnnzoo.checks import int_in
from rnnzoo.tasks.base import (
    IGNORE,
    Task,
    check_lengths,
    check_range,
    last_position_mask,
    pick_length,
    task,
    tokens_batch,
)


class _StateTask(Task):
    metric = "scaled_acc"

    def __init__(self, train_lengths=(3, 40), test_lengths=(40, 64, 128, 256), supervise="all"):
        lo, hi = check_range("train_lengths", train_lengths)
        self.train_lengths = (lo, hi)
        self.test_lengths = check_lengths("test_lengths", test_lengths)
        if supervise not in ("all", "last"):
            raise ValueError(f"supervise must be 'all' or 'last', got {supervise!r}")
        self.supervise = supervise

    def options(self):
        return dict(train_lengths=self.train_lengths, supervise=self.supervise)

    def _finish(self, inputs, answers, answer_mask):
        """answers (B, T) at positions where answer_mask; scored at the final position."""
        B, T = inputs.shape
        keep = answer_mask if self.supervise == "all" else last_position_mask(B, T)
        targets = np.where(keep, answers, IGNORE)
        return tokens_batch(inputs, targets, last_position_mask(B, T))


@task("parity", family="state_tracking")
class Parity(_StateTask):
    vocab_size, output_dim, chance = 2, 2, 0.5

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        bits = rng.integers(0, 2, size=(batch_size, T))
        return self._finish(bits, np.cumsum(bits, 1) % 2, np.ones_like(bits, dtype=bool))


@task("mod_arith", family="state_tracking")
class ModularArithmetic(_StateTask):
    OPS = ("+", "-", "*")

    def __init__(self, modulus: int = 5, **kw):
        super().__init__(**kw)
        self.modulus = int_in("modulus", modulus, lo=2)
        self.vocab_size = self.modulus + 3
        self.output_dim = self.modulus
        self.chance = 1 / self.modulus

    def options(self):
        return dict(super().options(), modulus=self.modulus)

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        T -= 1 - T % 2  # odd: d op d ... d
        m = self.modulus
        inputs = np.empty((batch_size, T), dtype=np.int64)
        inputs[:, 0::2] = rng.integers(0, m, size=(batch_size, (T + 1) // 2))
        inputs[:, 1::2] = m + rng.integers(0, 3, size=(batch_size, T // 2))
        answers = np.zeros((batch_size, T), dtype=np.int64)
        value = inputs[:, 0].copy()
        answers[:, 0] = value
        for t in range(2, T, 2):
            op, d = inputs[:, t - 1] - m, inputs[:, t]
            value = np.select([op == 0, op == 1, op == 2], [value + d, value - d, value * d]) % m
            answers[:, t] = value
        mask = np.zeros((batch_size, T), dtype=bool)
        mask[:, 0::2] = True
        return self._finish(inputs, answers, mask)


@task("mod_arith_brackets", family="state_tracking")
class ModularArithmeticBrackets(ModularArithmetic):
    def __init__(self, modulus: int = 5, **kw):
        kw.setdefault("supervise", "last")
        super().__init__(modulus, **kw)
        if self.supervise != "last":
            raise ValueError("supervise must be 'last' for mod_arith_brackets (prefixes of a "
                             "bracketed expression have no value)")
        self.vocab_size = self.modulus + 5   # digits, + - *, ( )

    def _expression(self, rng, n_ops):
        """(tokens, value) of a random fully bracketed expression with n_ops operators."""
        m = self.modulus
        if n_ops == 0:
            d = int(rng.integers(0, m))
            return [d], d
        left_ops = int(rng.integers(0, n_ops))
        lt, lv = self._expression(rng, left_ops)
        rt, rv = self._expression(rng, n_ops - 1 - left_ops)
        op = int(rng.integers(0, 3))
        value = (lv + rv, lv - rv, lv * rv)[op] % m
        return [m + 3, *lt, m + op, *rt, m + 4], value

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        n_ops = max(0, (T - 1) // 4)
        rows, answers = [], []
        for _ in range(batch_size):
            tokens, value = self._expression(rng, n_ops)
            rows.append(tokens)
            answers.append(value)
        inputs = np.array(rows, dtype=np.int64)
        ans = np.zeros(inputs.shape, dtype=np.int64)
        ans[:, -1] = answers
        return self._finish(inputs, ans, last_position_mask(*inputs.shape))


def _group(name):
    """Elements (tuples) of S3, S5 or A5 and the composition table table[a, b] = index(b o a)."""
    n = {"s3": 3, "s5": 5, "a5": 5}[name]
    perms = list(itertools.permutations(range(n)))
    if name == "a5":
        def even(p):
            return sum(p[i] > p[j] for i in range(n) for j in range(i + 1, n)) % 2 == 0
        perms = [p for p in perms if even(p)]
    index = {p: i for i, p in enumerate(perms)}
    table = np.array([[index[tuple(b[a[i]] for i in range(n))] for b in perms] for a in perms])
    return perms, table


@task("a5", family="state_tracking", group="a5")
@task("s5", family="state_tracking", group="s5")
@task("s3", family="state_tracking", group="s3")
class PermutationComposition(_StateTask):
    """The word problem of S3, S5 or A5: the answer at t is g_t o ... o g_1."""

    def __init__(self, group: str = "s5", **kw):
        super().__init__(**kw)
        if group not in ("s3", "s5", "a5"):
            raise ValueError(f"group must be 's3', 's5' or 'a5', got {group!r}")
        self.group = self.name = group
        self.elements, self.table = _group(group)
        self.vocab_size = self.output_dim = len(self.elements)
        self.chance = 1 / len(self.elements)

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        inputs = rng.integers(0, self.vocab_size, size=(batch_size, T))
        answers = np.empty_like(inputs)
        answers[:, 0] = inputs[:, 0]
        for t in range(1, T):
            answers[:, t] = self.table[answers[:, t - 1], inputs[:, t]]
        return self._finish(inputs, answers, np.ones_like(inputs, dtype=bool))
