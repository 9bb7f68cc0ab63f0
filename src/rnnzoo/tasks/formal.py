"""Formal-language tasks of Delétang et al. 2023 ("Neural Networks and the Chomsky
Hierarchy", arXiv:2207.02098): train on lengths 1-40, test on 41-500.

Classification tasks (the answer of each prefix is supervised, the final one scored):
- even_pairs (regular): bits; is the number of "ab" and "ba" pairs even? (first == last)
- cycle_navigation (regular): moves +1, -1, 0 on a cycle of 5; the final position.

Sequence tasks: the input, then as many blank tokens as the output is long, at
whose positions the output is predicted (per-token accuracy, as in the paper):
- stack_manipulation (DCF): a stack over {a, b} (top last), then actions POP,
  PUSH a, PUSH b; the output is the final stack top first, padded with an
  "empty" class to the input's length + 1.
- reverse_string (DCF): the bits reversed.
- duplicate_string (CS): the bits twice.
- bucket_sort (CS): symbols from an alphabet of 5, sorted.
"""

from __future__ import annotations

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


class _Formal(Task):
    def __init__(self, train_lengths=(1, 40), test_lengths=(41, 100, 250, 500)):
        lo, hi = check_range("train_lengths", train_lengths)
        self.train_lengths = (lo, hi)
        self.test_lengths = check_lengths("test_lengths", test_lengths)

    def options(self):
        return dict(train_lengths=self.train_lengths)


@task("even_pairs", family="formal")
class EvenPairs(_Formal):
    vocab_size, output_dim, chance, metric = 2, 2, 0.5, "scaled_acc"

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        bits = rng.integers(0, 2, size=(batch_size, T))
        even = (bits == bits[:, :1]).astype(np.int64)  # prefix t: first == t-th symbol
        return tokens_batch(bits, even, last_position_mask(batch_size, T))


@task("cycle_navigation", family="formal")
class CycleNavigation(_Formal):
    vocab_size, metric = 3, "scaled_acc"

    def __init__(self, cycle: int = 5, **kw):
        super().__init__(**kw)
        self.cycle = self.output_dim = int_in("cycle", cycle, lo=2)
        self.chance = 1 / self.cycle

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        moves = rng.integers(0, 3, size=(batch_size, T))  # 0: +1, 1: -1, 2: stay
        position = np.cumsum(np.choose(moves, [1, -1, 0]), 1) % self.cycle
        return tokens_batch(moves, position, last_position_mask(batch_size, T))


class _Transduction(_Formal):
    """Input tokens, then blanks where the output is read; per-token accuracy there."""

    output_factor = 1  # output length / input length

    def max_length(self):
        return (1 + self.output_factor) * max(*self.test_lengths, self.train_lengths[1]) + 1

    def _pack(self, inputs: list[list[int]], outputs: list[list[int]], blank: int):
        B = len(inputs)
        T = max(len(i) + len(o) for i, o in zip(inputs, outputs))
        x = np.full((B, T), blank, dtype=np.int64)
        y = np.full((B, T), IGNORE, dtype=np.int64)
        for b, (i, o) in enumerate(zip(inputs, outputs)):
            x[b, :len(i)] = i
            y[b, len(i):len(i) + len(o)] = o
        return tokens_batch(x, y)


@task("reverse_string", family="formal")
class ReverseString(_Transduction):
    vocab_size, output_dim, chance = 3, 2, 0.5

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        bits = rng.integers(0, 2, size=(batch_size, T))
        return self._pack(bits.tolist(), bits[:, ::-1].tolist(), blank=2)


@task("duplicate_string", family="formal")
class DuplicateString(_Transduction):
    vocab_size, output_dim, chance = 3, 2, 0.5
    output_factor = 2

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        bits = rng.integers(0, 2, size=(batch_size, T))
        return self._pack(bits.tolist(), np.concatenate([bits, bits], 1).tolist(), blank=2)


@task("bucket_sort", family="formal")
class BucketSort(_Transduction):
    def __init__(self, alphabet: int = 5, **kw):
        super().__init__(**kw)
        self.alphabet = self.output_dim = int_in("alphabet", alphabet, lo=2)
        self.vocab_size = self.alphabet + 1
        self.chance = 1 / self.alphabet

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        symbols = rng.integers(0, self.alphabet, size=(batch_size, T))
        return self._pack(symbols.tolist(), np.sort(symbols, 1).tolist(), blank=self.alphabet)


@task("stack_manipulation", family="formal")
class StackManipulation(_Transduction):
    """Tokens: 0 a, 1 b (stack content), 2 POP, 3 PUSH a, 4 PUSH b, 5 blank.
    Output classes: 0 a, 1 b, 2 empty."""

    vocab_size, output_dim, chance = 6, 3, 1 / 3

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        inputs, outputs = [], []
        for _ in range(batch_size):
            n_stack = int(rng.integers(0, T + 1))
            stack = rng.integers(0, 2, size=n_stack).tolist()
            actions = rng.integers(2, 5, size=T - n_stack).tolist()
            final = list(stack)
            for a in actions:
                if a == 2:
                    if final:
                        final.pop()
                else:
                    final.append(a - 3)
            out = final[::-1] + [2] * (T + 1 - len(final))
            inputs.append(stack + actions)
            outputs.append(out)
        return self._pack(inputs, outputs, blank=5)
